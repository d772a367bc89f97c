"""ForegroundBlocking: the job runs in the caller's thread before ``perform_later`` returns."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from unified_jobs.adapters.base import Adapter, Capabilities
from unified_jobs.adapters.memory_store import MemoryJobStore
from unified_jobs.core.executor import Executor
from unified_jobs.core.job import Job
from unified_jobs.core.outcome import Outcome
from unified_jobs.core.store import JobStore

__all__ = ["InlineAdapter", "arun_inline", "run_inline", "settle_inline"]


def settle_inline(outcome: Outcome) -> Any:
    """An inline attempt's result: its value, or its exception raised in the caller."""
    if outcome.kind in ("failed", "rejected") or (outcome.kind == "cancelled" and outcome.error):
        assert outcome.error is not None
        raise outcome.error
    return outcome.value


def run_inline(executor: Executor, store: JobStore, job: Job) -> Any:
    """Run ``job`` now, retrying at once as its ``Retry`` allows; its last error propagates."""
    while True:
        if store.record_started(job).cancelled:
            return None
        outcome = executor.run(job)
        store.record_outcome(job, outcome)
        if outcome.kind != "retry":
            return settle_inline(outcome)
        job = replace(job, attempt=job.attempt + 1)


async def arun_inline(executor: Executor, store: JobStore, job: Job) -> Any:
    """``run_inline`` on the caller's event loop."""
    while True:
        if store.record_started(job).cancelled:
            return None
        outcome = await executor.arun(job)
        store.record_outcome(job, outcome)
        if outcome.kind != "retry":
            return settle_inline(outcome)
        job = replace(job, attempt=job.attempt + 1)


class InlineAdapter(Adapter):
    """Runs each job at once. A failed attempt is retried at once, without sleeping, as its
    ``Retry`` allows; the last attempt's exception propagates to the caller.

    Delays are not waited for: ``wait``/``run_at`` are accepted and ignored.
    """

    kind: ClassVar[str] = "ForegroundBlocking"
    capabilities: ClassVar[Capabilities] = Capabilities(delay=False, priority=False)

    def __init__(self, executor: Executor, store: JobStore | None = None) -> None:
        self.executor = executor
        self.store = store if store is not None else MemoryJobStore()

    def enqueue(self, job: Job) -> object:
        self.store.record_enqueued([job])
        return run_inline(self.executor, self.store, job)

    async def aenqueue(self, job: Job) -> None:
        # In the caller's own loop, so async resources bound to it work in the job.
        self.store.record_enqueued([job])
        await arun_inline(self.executor, self.store, job)

    async def aenqueue_unique(self, jobs: list[Job]) -> dict[str, str]:
        # As aenqueue: the jobs run in the caller's own loop.
        refused = self.store.claim_unique(jobs)
        try:
            for job in jobs:
                if job.id not in refused:
                    await self.aenqueue(job)
        except BaseException:
            self.store.release_unique(jobs)
            raise
        return refused

    def cancel(self, job_id: str) -> bool:
        return self.store.cancel(job_id) or self.executor.cancel(job_id)

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        return None
