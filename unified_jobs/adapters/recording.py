"""Recording: the test-only adapter. Jobs are recorded, never run.

``Jobs.perform_later`` has already validated the arguments and serialized them to JSON
when ``enqueue`` is called, so what is recorded is exactly what a queue would receive.
``unified_jobs.testing`` builds the assertion helpers and ``perform_enqueued_jobs`` on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ClassVar

from unified_jobs.adapters.base import Adapter, Capabilities
from unified_jobs.adapters.memory_store import MemoryJobStore
from unified_jobs.core.job import Job
from unified_jobs.core.store import JobStore

__all__ = ["RecordingAdapter"]


class RecordingAdapter(Adapter):
    """Records every enqueued ``Job``, in enqueue order; thread-safe.

    Delays and priorities are accepted and kept on the recorded job (``run_at``,
    ``priority``) so tests can assert on them; nothing ever runs by itself.
    """

    kind: ClassVar[str] = "Recording"
    capabilities: ClassVar[Capabilities] = Capabilities(cancel_running=False)

    def __init__(self, store: JobStore | None = None) -> None:
        self._lock = threading.Lock()
        self._jobs: list[Job] = []
        #: Statuses of the recorded jobs (queued until ``perform_enqueued_jobs`` runs them).
        self.store = store if store is not None else MemoryJobStore()

    def enqueue(self, job: Job) -> None:
        """Record ``job``."""
        with self._lock:
            self._jobs.append(job)
        self.store.record_enqueued([job])

    async def aenqueue(self, job: Job) -> None:
        # Appending under a lock never blocks for long: no thread hop needed.
        self.enqueue(job)

    @property
    def jobs(self) -> list[Job]:
        """A copy of the recorded jobs, oldest first."""
        with self._lock:
            return list(self._jobs)

    def take(self, predicate: Callable[[Job], bool]) -> Job | None:
        """Remove and return the oldest recorded job for which ``predicate`` is true."""
        with self._lock:
            for index, job in enumerate(self._jobs):
                if predicate(job):
                    return self._jobs.pop(index)
        return None

    def clear(self) -> list[Job]:
        """Forget every recorded job; returns the ones forgotten."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
        return jobs

    def cancel(self, job_id: str) -> bool:
        """A recorded job is cancelled and no longer recorded: it never runs. Nothing runs by
        itself here, so there is no running job to reach."""
        if not self.store.cancel(job_id):
            return False
        with self._lock:
            self._jobs = [job for job in self._jobs if job.id != job_id]
        return True

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        return None
