"""BackgroundQueue: jobs are published as Celery (protocol 2) messages to Redis, PostgreSQL or
SQLite, and run in worker processes (``unified-jobs start --worker`` or ``celery worker``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, cast

from kombu.exceptions import OperationalError

from unified_jobs._uri import mask_uri
from unified_jobs.adapters.base import Adapter
from unified_jobs.errors import EnqueueError
from unified_jobs.job import Job, JobStatus

if TYPE_CHECKING:
    from unified_jobs.adapters.sql.store import JobStore
    from unified_jobs.jobs import Jobs

__all__ = ["TAGS_HEADER", "CeleryQueueAdapter"]

#: The message header holding the worker's tags, so they travel with the job (``jobs dump``).
TAGS_HEADER = "unified_jobs_tags"


class CeleryQueueAdapter(Adapter):
    kind: ClassVar[str] = "BackgroundQueue"
    #: The app's own Celery tasks publish as plain Celery does.
    publishes_to_celery: ClassVar[bool] = True

    def __init__(self, jobs: Jobs) -> None:
        assert jobs.config.queue is not None
        self._queue = jobs.config.queue
        self._bridge = jobs.celery_bridge()
        self._redis = self._queue.kind == "Redis"
        self._workers = jobs.workers  # a live view: workers registered later count too
        self._store: JobStore | None = None

    def enqueue(self, job: Job) -> None:
        try:
            self._publish(job)
        except (OperationalError, OSError) as exc:
            raise self._error(f"job {job.id} ({job.name})", exc) from None

    def enqueue_many(self, jobs: list[Job]) -> None:
        app = self._bridge.app
        try:
            # One flush for the whole batch: on Redis a MULTI/EXEC pipeline, all or nothing.
            with app.producer_or_acquire() as producer, producer.batch(max_size=2 * len(jobs) + 1):
                for job in jobs:
                    self._publish(job, producer)
        except (OperationalError, OSError) as exc:
            raise self._error(f"{len(jobs)} jobs", exc) from None

    def _publish(self, job: Job, producer: Any = None) -> None:
        # Ours: 0-9, higher first, default 0. kombu's Redis transport serves 0 first (and puts a
        # message without a priority there), so every Redis message gets its inverted priority.
        priority = job.priority or 0
        options: dict[str, Any] = {"priority": 9 - priority if self._redis else priority}
        worker_cls = self._workers.get(job.name)
        if worker_cls is not None and worker_cls.tags:
            # Celery keeps custom headers in the message; the job's tags survive a dump/import.
            options["headers"] = {TAGS_HEADER: list(worker_cls.tags)}
        self._bridge.app.send_task(
            job.name,
            args=json.loads(job.args_json),
            kwargs=json.loads(job.kwargs_json),
            task_id=job.id,
            queue=job.queue,
            eta=job.run_at,
            producer=producer,
            **options,
        )

    def _error(self, what: str, exc: BaseException) -> EnqueueError:
        return EnqueueError(
            f"could not enqueue {what} on {self._queue.kind} at {mask_uri(self._queue.uri)}: {exc}; "
            "is it running and reachable? Nothing was enqueued."
        )

    def status(self, job_id: str) -> JobStatus | None:
        """From the job store on the SQL kinds; Redis keeps none (use a Celery result backend)."""
        if self._redis:
            return None
        if self._store is None:
            from unified_jobs.adapters.sql.store import JobStore

            self._store = JobStore(self._queue.uri, self._queue.table_prefix)
        return cast("JobStatus | None", self._store.status(job_id))

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        # Nothing to drain: jobs are in the broker. kombu's producer pools are process-wide
        # (shared by every app on the same broker URL), so they are left for the process' exit.
        return None

    def describe(self) -> dict[str, str]:
        return {"mode": self.kind, "kind": self._queue.kind, "uri": mask_uri(self._queue.uri)}
