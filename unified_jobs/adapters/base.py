"""The Adapter port: what every mode implements. An adapter is handed the ``Executor`` (and
its job store), never the ``Jobs`` app."""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from unified_jobs.core.job import Job, JobInfo, JobStatus, new_job_id
from unified_jobs.core.store import JobStore

if TYPE_CHECKING:
    from unified_jobs.scheduler.state import ScheduleState
    from unified_jobs.worker import Worker

__all__ = ["Adapter", "Capabilities", "describe"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capabilities:
    """What an adapter honours; ``Jobs`` checks every job against them in one place."""

    #: ``wait``/``run_at`` are honoured (else the job runs now, and Jobs says so at debug level).
    delay: bool = True
    #: ``priority`` orders jobs.
    priority: bool = True
    #: A job that is running can be asked to stop (``jobs.cancel``).
    cancel_running: bool = True


class Adapter(ABC):
    """Takes jobs from ``Jobs.perform_later`` and sees that they run."""

    #: Human name of the mode/backend, for logs and ``doctor``.
    kind: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: Where job statuses and failures are kept.
    store: JobStore

    @property
    def supports_delay(self) -> bool:
        return self.capabilities.delay

    @abstractmethod
    def enqueue(self, job: Job) -> object:
        """Take the job, or raise ``EnqueueError``. Nothing may be dropped silently.

        Returns the job's result where it ran at once (ForegroundBlocking), else ``None``.
        """

    def enqueue_many(self, jobs: list[Job]) -> None:
        """Take several jobs; adapters that can batch the round trips override it."""
        for job in jobs:
            self.enqueue(job)

    async def aenqueue(self, job: Job) -> None:
        """Async form; by default ``enqueue`` in a thread so the event loop never blocks."""
        await asyncio.to_thread(self.enqueue, job)

    def enqueue_unique(self, jobs: list[Job]) -> dict[str, str]:
        """Enqueue the jobs whose unique key (if they have one) no waiting or running job
        holds; returns ``{job id: the holder's id}`` for those that were not enqueued.

        By default the store takes the keys (atomically), then the jobs taken are enqueued;
        if that fails, their keys are released and the error propagates.
        """
        refused = self.store.claim_unique(jobs)
        taken = [job for job in jobs if job.id not in refused] if refused else jobs
        try:
            self.enqueue_all(taken)
        except BaseException:
            self.store.release_unique(taken)  # only keys these jobs still hold
            raise
        return refused

    async def aenqueue_unique(self, jobs: list[Job]) -> dict[str, str]:
        """Async form of ``enqueue_unique``; by default in a thread."""
        return await asyncio.to_thread(self.enqueue_unique, jobs)

    def enqueue_all(self, jobs: list[Job]) -> None:
        """``enqueue`` for one job, ``enqueue_many`` for more, nothing for none."""
        if len(jobs) == 1:
            self.enqueue(jobs[0])
        elif jobs:
            self.enqueue_many(jobs)

    def enqueue_in_transaction(self, transaction: Any, jobs: list[Job]) -> dict[str, str]:
        """Enqueue ``jobs`` once ``transaction`` (a SQLAlchemy connection or session) commits,
        and never if it rolls back. Kinds that can write the jobs in that very transaction
        override this. Returns what ``enqueue_unique`` does, for the keys checked now (here:
        none; they are checked at the commit)."""
        from unified_jobs.adapters.transactions import after_commit

        after_commit(transaction, lambda: self._enqueue_committed(jobs), what=describe(jobs))
        return {}

    def _enqueue_committed(self, jobs: list[Job]) -> None:
        if not any(job.unique_key is not None for job in jobs):
            self.enqueue_all(jobs)
            return
        for job_id, holder in self.enqueue_unique(jobs).items():
            logger.info("job %s was not enqueued at the commit: job %s holds its unique key", job_id, holder)

    def on_register(self, worker_cls: type[Worker[Any]]) -> None:  # noqa: B027 - optional hook
        """Called for each worker registered with the app."""

    # -- the job store -----------------------------------------------------------------------

    def status(self, job_id: str) -> JobStatus | None:
        info = self.store.get(job_id)
        return info.status if info is not None else None

    def job(self, job_id: str) -> JobInfo | None:
        return self.store.get(job_id)

    def retry(self, job_id: str) -> bool:
        """Enqueue a failed job again, attempts counted from 1; False if it is not failed."""
        info = self.store.get(job_id)
        if info is None or info.status != "failed":
            return False
        args = info.args
        if isinstance(args, dict) and set(args) == {"args", "kwargs"}:
            args_json, kwargs_json = json.dumps(args["args"]), json.dumps(args["kwargs"])
        else:
            args_json, kwargs_json = "[]", json.dumps(args)
        self.store.discard(job_id)
        self.enqueue(
            Job(
                id=job_id or new_job_id(),
                name=info.worker,
                queue=info.queue,
                kwargs_json=kwargs_json,
                args_json=args_json,
                priority=info.priority,
            )
        )
        return True

    @property
    def can_run_now(self) -> bool:
        """Whether ``run_now`` can make a waiting job due now here (for a dashboard's button):
        not where nothing waits (ForegroundBlocking), nor where the store cannot reach the
        waiting message (the RabbitMQ kind)."""
        return self.capabilities.delay and self.store.can_run_now

    def run_now(self, job_id: str) -> bool:
        """Make a job that waits for its ``run_at`` due now; False if it is not waiting so.

        The store moves it where the store holds the waiting message too (the Redis kind's
        delayed sets, the SQL rows); an adapter that holds delayed jobs itself (the in-process
        pool) overrides this to move its own copy as well."""
        return self.store.run_now(job_id)

    def cancel(self, job_id: str) -> bool:
        """A waiting job never runs; a running one is asked to stop. False if neither."""
        return self.store.cancel(job_id) or self.store.request_cancel(job_id)

    @abstractmethod
    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop; with ``wait``, let accepted jobs finish first (up to ``timeout`` seconds)."""

    def schedule_state(self) -> ScheduleState:
        """Where the scheduler keeps each schedule's last tick (made on first use, then kept)."""
        state: ScheduleState | None = self.__dict__.get("_schedule_state")
        if state is None:
            state = self.__dict__.setdefault("_schedule_state", self._make_schedule_state())
        return state

    def _make_schedule_state(self) -> ScheduleState:
        """In memory here, so per process; queue adapters keep it in the queue's own store."""
        from unified_jobs.scheduler.state import MemoryScheduleState

        return MemoryScheduleState()


def describe(jobs: list[Job]) -> str:
    """``job <id> (<worker>)``, or ``<n> jobs of <worker>``, for messages."""
    if len(jobs) == 1:
        return f"job {jobs[0].id} ({jobs[0].name})"
    return f"{len(jobs)} jobs of {jobs[0].name}" if jobs else "no jobs"
