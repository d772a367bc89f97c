"""The job store of the in-process modes (and of the test recorder): a dict in memory.

Failed and cancelled jobs stay until discarded; finished ones are forgotten after
``keep_completed`` seconds or past the newest ``size`` of them, whichever comes first.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace

from unified_jobs.core.job import Job, JobInfo, JobStatus, utcnow
from unified_jobs.core.outcome import Outcome
from unified_jobs.core.store import JobStore, StartCheck

__all__ = ["MemoryJobStore"]

_SETTLED: dict[str, JobStatus] = {
    "succeeded": "completed",
    "retry": "retrying",
    "failed": "failed",
    "rejected": "failed",
    "cancelled": "cancelled",
}


class MemoryJobStore(JobStore):
    def __init__(self, keep_completed: float = 86_400.0, size: int = 10_000) -> None:
        self._keep = keep_completed
        self._size = size
        self._lock = threading.Lock()
        self._jobs: dict[str, JobInfo] = {}
        self._sources: dict[str, Job] = {}  # what ``retry`` enqueues again
        self._completed: OrderedDict[str, float] = OrderedDict()  # id -> monotonic finish time

    # -- reads -------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobInfo | None:
        with self._lock:
            self._expire()
            info = self._jobs.get(job_id)
            return replace(info) if info is not None else None

    def failed(self, worker: str | None = None, limit: int = 100) -> list[JobInfo]:
        with self._lock:
            found = [
                replace(i) for i in self._jobs.values() if i.status == "failed" and worker in (None, i.worker)
            ]
        found.sort(key=lambda i: i.finished_at or i.enqueued_at or utcnow(), reverse=True)
        return found[:limit]

    def source(self, job_id: str) -> Job | None:
        """The job as it was enqueued (for ``retry``)."""
        with self._lock:
            return self._sources.get(job_id)

    # -- changes -----------------------------------------------------------------------------

    def discard(self, job_id: str) -> bool:
        with self._lock:
            info = self._jobs.get(job_id)
            if info is None or info.status not in ("failed", "cancelled"):
                return False
            del self._jobs[job_id]
            self._sources.pop(job_id, None)
            return True

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            info = self._jobs.get(job_id)
            if info is None or info.status not in ("queued", "scheduled", "retrying"):
                return False
            info.status = "cancelled"
            info.finished_at = utcnow()
            return True

    def record_enqueued(self, jobs: Sequence[Job]) -> None:
        now = utcnow()
        with self._lock:
            for job in jobs:
                self._completed.pop(job.id, None)
                self._sources[job.id] = job
                previous = self._jobs.get(job.id)
                status: JobStatus = "scheduled" if job.run_at is not None and job.run_at > now else "queued"
                if previous is not None and job.attempt > 1:
                    previous.status = "retrying"
                    previous.run_at = job.run_at
                    continue
                self._jobs[job.id] = JobInfo(
                    id=job.id,
                    worker=job.name,
                    queue=job.queue,
                    args=_args_of(job),
                    status=status,
                    enqueued_at=job.enqueued_at,
                    run_at=job.run_at,
                    priority=job.priority,
                )

    def record_started(self, job: Job) -> StartCheck:
        with self._lock:
            info = self._jobs.get(job.id)
            if info is None:
                return StartCheck(deliveries=1)
            if info.status == "cancelled":
                return StartCheck(cancelled=True)
            info.status = "processing"
            info.attempts = job.attempt
            info.started_at = utcnow()
            return StartCheck(deliveries=1)

    def record_outcome(self, job: Job, outcome: Outcome) -> None:
        with self._lock:
            info = self._jobs.get(job.id)
            if info is None:
                return
            info.status = _SETTLED[outcome.kind]
            info.attempts = max(info.attempts, outcome.attempt)
            if outcome.error_text is not None:
                info.last_error, info.traceback = outcome.error_text, outcome.traceback
            if outcome.kind == "retry":
                info.run_at = outcome.retry_at
                return
            info.finished_at = utcnow()
            if info.status == "completed":
                self._completed[job.id] = time.monotonic()
                self._sources.pop(job.id, None)
                self._expire()

    def _expire(self) -> None:
        cutoff = time.monotonic() - self._keep
        while self._completed:
            job_id, finished = next(iter(self._completed.items()))
            if finished > cutoff and len(self._completed) <= self._size:
                break
            self._completed.popitem(last=False)
            info = self._jobs.get(job_id)
            if info is not None and info.status == "completed":
                del self._jobs[job_id]


def _args_of(job: Job) -> object:
    try:
        kwargs = json.loads(job.kwargs_json)
        args = json.loads(job.args_json)
    except ValueError:
        return job.kwargs_json
    return kwargs if not args else {"args": args, "kwargs": kwargs}
