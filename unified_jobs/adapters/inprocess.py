"""BackgroundAsync: an in-process pool, no broker.

``concurrency`` threads take ready jobs, highest priority first. A sync ``perform`` runs on
the thread; an ``async def perform`` runs on one event loop the pool owns (the thread waits
for it, so ``concurrency`` bounds both kinds together). Delayed jobs wait in a heap until due.

Unlike Loco's spawn-and-forget, nothing is dropped silently: ``close`` drains (jobs that the
running jobs enqueue meanwhile are taken and run too), and at interpreter exit the pool drains
for ``workers.shutdown_timeout`` seconds, before the interpreter stops other thread pools. Every
job that could still not run is logged at ERROR with its id, worker and arguments.
A forked child process starts with an empty pool of its own (the parent's jobs stay the
parent's).
"""

from __future__ import annotations

import asyncio
import atexit
import heapq
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, ClassVar

from unified_jobs.adapters.base import Adapter
from unified_jobs.adapters.memory_store import MemoryJobStore
from unified_jobs.core.executor import Executor
from unified_jobs.core.job import Job, utcnow
from unified_jobs.core.store import JobStore
from unified_jobs.errors import ShutdownError

__all__ = ["InProcessAdapter"]

logger = logging.getLogger(__name__)

_pools: weakref.WeakSet[InProcessAdapter] = weakref.WeakSet()


def _drain_all_at_exit() -> None:
    for pool in list(_pools):
        pool.close(wait=True, timeout=pool._shutdown_timeout)


# Run before the interpreter shuts thread pools down (concurrent.futures uses the same hook),
# so jobs that use asyncio.to_thread or an executor still work while the pool drains.
_register_early = getattr(threading, "_register_atexit", None)
if _register_early is not None:
    _register_early(_drain_all_at_exit)
else:  # pragma: no cover - other Python implementations
    atexit.register(_drain_all_at_exit)


class InProcessAdapter(Adapter):
    kind: ClassVar[str] = "BackgroundAsync"

    def __init__(
        self, executor: Executor, concurrency: int, shutdown_timeout: float, store: JobStore | None = None
    ) -> None:
        self.executor = executor
        self.store = store if store is not None else MemoryJobStore()
        self._concurrency = concurrency
        self._shutdown_timeout = shutdown_timeout
        self._stopped = False
        self._reset()
        _pools.add(self)

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (whose threads did not survive)."""
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._ready: list[tuple[int, int, Job]] = []  # (-priority, seq, job)
        self._delayed: list[tuple[float, int, Job]] = []  # (monotonic due, seq, job)
        self._running: dict[str, Job] = {}
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- taking jobs -------------------------------------------------------------------------

    def enqueue(self, job: Job) -> None:
        if self._pid != os.getpid():
            self._reset()
        with self._cond:
            if self._stopped:
                raise ShutdownError(f"the BackgroundAsync pool is shut down; job {job.id} was not taken")
            if not self._threads:
                self._start()
            self.store.record_enqueued([job])
            self._push(job)

    def _push(self, job: Job) -> None:
        # Under self._cond.
        delay = (job.run_at - utcnow()).total_seconds() if job.run_at else 0.0
        seq = next(self._seq)
        if delay > 0:
            heapq.heappush(self._delayed, (time.monotonic() + delay, seq, job))
        else:
            heapq.heappush(self._ready, (-(job.priority or 0), seq, job))
        self._cond.notify_all()

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop_thread = threading.Thread(target=loop.run_forever, name="unified-jobs-async-loop", daemon=True)
        loop_thread.start()
        for n in range(self._concurrency):
            t = threading.Thread(target=self._work, name=f"unified-jobs-worker-{n}", daemon=True)
            t.start()
            self._threads.append(t)

    # -- running jobs ------------------------------------------------------------------------

    def _next_job(self) -> Job | None:
        with self._cond:
            while True:
                if self._stopped:
                    return None
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    _, seq, job = heapq.heappop(self._delayed)
                    heapq.heappush(self._ready, (-(job.priority or 0), seq, job))
                if self._ready:
                    job = heapq.heappop(self._ready)[2]
                    self._running[job.id] = job
                    return job
                self._cond.wait(self._delayed[0][0] - now if self._delayed else None)

    def _work(self) -> None:
        while (job := self._next_job()) is not None:
            retry: Job | None = None
            try:
                retry = self._run(job)
            finally:  # even SystemExit from a job leaves the pool's books right
                with self._cond:
                    self._running.pop(job.id, None)
                    if retry is not None and not self._stopped:
                        self._push(retry)
                    elif retry is not None:
                        self.store.cancel(retry.id)
                        logger.error(
                            "job %s (%s) was not retried: the app shut down first; args=%s",
                            retry.id,
                            retry.name,
                            retry.kwargs_json,
                        )
                    self._cond.notify_all()

    def _run(self, job: Job) -> Job | None:
        """Run one attempt; the next attempt to schedule, if it is to be retried."""
        if self.store.record_started(job).cancelled:
            return None
        outcome = self.executor.run(job, run_coroutine=self._on_loop)
        self.store.record_outcome(job, outcome)
        if outcome.kind == "retry":
            logger.warning(
                "job %s (%s) attempt %d failed, retrying in %.1fs: %s",
                job.id,
                job.name,
                outcome.attempt,
                outcome.delay,
                outcome.error_text,
            )
            return replace(job, attempt=job.attempt + 1, run_at=outcome.retry_at)
        if outcome.kind in ("failed", "rejected"):
            logger.error(
                "job %s (%s) failed: %s", job.id, job.name, outcome.error_text, exc_info=outcome.error
            )
        return None

    def _on_loop(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def cancel(self, job_id: str) -> bool:
        return self.store.cancel(job_id) or self.executor.cancel(job_id)

    # -- stopping ----------------------------------------------------------------------------

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._stopped:
                return
            while wait and (self._ready or self._delayed or self._running):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._stopped = True
            not_run = [j for *_, j in sorted(self._ready)] + [j for *_, j in sorted(self._delayed)]
            still_running = list(self._running.values())
            self._ready.clear()
            self._delayed.clear()
            self._cond.notify_all()
        for job in not_run:
            self.store.cancel(job.id)
            logger.error(
                "job %s (%s) was not run: the app shut down first; queue=%s run_at=%s args=%s",
                job.id,
                job.name,
                job.queue,
                job.run_at,
                job.kwargs_json,
            )
        for job in still_running:
            logger.error("job %s (%s) was still running at shutdown and may not finish", job.id, job.name)
        if self._loop is not None and not still_running:
            self._loop.call_soon_threadsafe(self._loop.stop)
