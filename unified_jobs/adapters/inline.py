"""ForegroundBlocking: the job runs in the caller's thread before ``perform_later`` returns."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, ClassVar

from unified_jobs._async import run_coroutine_sync
from unified_jobs.adapters.base import Adapter
from unified_jobs.job import Job, JobStatus, StatusBook

if TYPE_CHECKING:
    from unified_jobs.jobs import Jobs

__all__ = ["InlineAdapter"]


class InlineAdapter(Adapter):
    """Runs each job at once; the job's exception propagates to the caller.

    Delays are not waited for: ``wait``/``run_at`` are accepted and ignored.
    """

    kind: ClassVar[str] = "ForegroundBlocking"
    supports_delay: ClassVar[bool] = False
    supports_priority: ClassVar[bool] = False

    def __init__(self, jobs: Jobs) -> None:
        self._jobs = jobs
        self._statuses = StatusBook()

    def enqueue(self, job: Job) -> object:
        self._statuses.set(job.id, "processing")
        try:
            result = self._jobs.prepare(job)()
            if inspect.iscoroutine(result):
                result = run_coroutine_sync(result)
        except BaseException:
            self._statuses.set(job.id, "failed")
            raise
        self._statuses.set(job.id, "completed")
        return result

    async def aenqueue(self, job: Job) -> None:
        # In the caller's own loop, so async resources bound to it work in the job.
        self._statuses.set(job.id, "processing")
        try:
            result = self._jobs.prepare(job)()
            if inspect.isawaitable(result):
                await result
        except BaseException:
            self._statuses.set(job.id, "failed")
            raise
        self._statuses.set(job.id, "completed")

    def status(self, job_id: str) -> JobStatus | None:
        return self._statuses.get(job_id)

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        return None
