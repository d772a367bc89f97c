"""The small interface every adapter implements."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from unified_jobs.job import Job, JobStatus

if TYPE_CHECKING:
    from unified_jobs.worker import Worker

__all__ = ["Adapter"]


class Adapter(ABC):
    """Takes jobs from ``Jobs.perform_later`` and sees that they run.

    Capabilities are declared as flags; ``Jobs`` checks every job against them in one
    place, so no adapter can forget a check.
    """

    #: Human name of the mode/backend, for logs and ``doctor``.
    kind: ClassVar[str]
    #: ``wait``/``run_at`` are honoured (else they are ignored: the job runs now).
    supports_delay: ClassVar[bool] = True
    #: ``priority`` orders jobs.
    supports_priority: ClassVar[bool] = True

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

    def on_register(self, worker_cls: type[Worker[Any]]) -> None:  # noqa: B027 - optional hook
        """Called for each worker registered with the app."""

    def status(self, job_id: str) -> JobStatus | None:
        """The job's status, or ``None`` where this adapter keeps no record of it."""
        return None

    @abstractmethod
    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop; with ``wait``, let accepted jobs finish first (up to ``timeout`` seconds)."""

    def describe(self) -> dict[str, str]:
        """A few facts for ``doctor`` and logs."""
        return {"mode": self.kind}
