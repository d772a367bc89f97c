"""BackgroundAsync: an in-process pool, no broker.

At most ``concurrency`` jobs run at once, sync and async together, and whenever a place is free
the ready job of highest priority takes it (first come, first served within a priority). A sync
``perform`` runs on one of ``concurrency`` pool threads; an ``async def perform`` runs as a task
on one event loop the pool owns. Delayed jobs (and retries waiting for their backoff) wait in a
heap that a timer thread watches, and join the ready ones when due.

Unlike Loco's spawn-and-forget, nothing is dropped silently: ``close`` drains (jobs that the
running jobs enqueue meanwhile are taken and run too), and at interpreter exit the pool drains
for ``workers.shutdown_timeout`` seconds, before the interpreter stops other thread pools. Every
job that could still not run is logged at ERROR with its id, worker and arguments.
A forked child process starts with an empty pool of its own (the parent's jobs stay the
parent's).

How a job gets a place, cheaply. A free place is a token in a deque and a ready job an entry in
its priority's FIFO; both are taken and given back with atomic ``pop``/``append``, so the hot
path takes no lock (the lock guards what is rare: new priorities, delayed jobs, retries,
``close``). Whoever frees a place or adds a ready job hands free places to the best ready jobs:
a sync job goes into the pool threads' ``SimpleQueue``, an async one is started as a task (from
the loop itself right away; from another thread through an inbox that wakes the loop only when
it is not already due to look). A job that ends while others are ready hands its place straight
to the best of them, and the pool thread that ran it runs the next sync job itself. So a busy
pool runs job after job without waking another thread or taking a lock the enqueueing thread
takes too: under the GIL, a lock that every job takes on every thread turns into a convoy
where each acquisition costs a thread switch.
"""

from __future__ import annotations

import asyncio
import atexit
import heapq
import itertools
import logging
import os
import queue
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Coroutine
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar

from unified_jobs.adapters.base import Adapter
from unified_jobs.adapters.heartbeat import Heartbeat
from unified_jobs.adapters.memory_store import MemoryJobStore
from unified_jobs.adapters.ready import ReadyJobs
from unified_jobs.core.executor import Executor
from unified_jobs.core.heartbeat import IN_PROCESS
from unified_jobs.core.job import Job, utcnow
from unified_jobs.core.limits import CancelToken
from unified_jobs.core.monitor import WorkerBeat
from unified_jobs.core.outcome import Outcome
from unified_jobs.core.store import JobStore
from unified_jobs.errors import ShutdownError

__all__ = ["InProcessAdapter"]

logger = logging.getLogger(__name__)

_pools: weakref.WeakSet[InProcessAdapter] = weakref.WeakSet()


def _reset_in_child() -> None:
    for pool in list(_pools):
        pool._reset()


# A forked child starts with empty pools (rather than each enqueue asking os.getpid()).
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


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
        self,
        executor: Executor,
        concurrency: int,
        shutdown_timeout: float,
        store: JobStore | None = None,
        *,
        heartbeat_interval: float = 10.0,
    ) -> None:
        self.executor = executor
        self.store = store if store is not None else MemoryJobStore()
        self._concurrency = concurrency
        self._shutdown_timeout = shutdown_timeout
        self._heartbeat_interval = heartbeat_interval
        self._stopped = False
        self._reset()
        _pools.add(self)

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (whose threads did not survive)."""
        self._lock = threading.Lock()
        # Waited on by close() (for the pool to drain) and by the timer (for the next due job).
        self._cond = threading.Condition(self._lock)
        self._seq = itertools.count()
        self._ready = ReadyJobs()  # taken from without the lock; new priorities under it
        self._delayed: list[tuple[float, int, Job]] = []  # (monotonic due, seq, job), under the lock
        # One token per place no job holds: taken and given back with (atomic) pop and append.
        self._places: deque[None] = deque([None] * self._concurrency)
        self._running: dict[str, Job] = {}  # jobs that hold a place (for the shutdown log)
        self._draining = 0  # close() calls waiting for the pool to empty
        self._sync_jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._timer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._inbox: deque[Job] = deque()  # async jobs for the loop to start
        self._inbox_armed = False  # the loop is due to look at the inbox
        # The running async jobs' tasks, by token: the loop keeps only weak references.
        self._tasks: dict[CancelToken, asyncio.Task[None]] = {}
        # What the executor's observers captured where each job was enqueued (the trace
        # context: pool threads do not inherit the enqueuer's contextvars), until it ends.
        self._parents: dict[str, Any] = {}
        self._heartbeat: Heartbeat | None = None  # from the first job on (see _beat)

    # -- taking jobs -------------------------------------------------------------------------

    def enqueue(self, job: Job) -> None:
        parent = self.executor.capture() if self.executor.observers else None
        with self._lock:
            if self._stopped:
                raise ShutdownError(f"the BackgroundAsync pool is shut down; job {job.id} was not taken")
            if not self._threads:
                self._start()
            if parent is not None:
                self._parents[job.id] = parent
            self.store.record_enqueued((job,))
            fifo = self._ready.fifo(job.priority) if job.run_at is None else None
            if fifo is not None:
                fifo.append(job)  # _push's common case
            else:
                self._push(job)
            to_loop = self._dispatch(locked=True)[0] if self._places else None
        if to_loop:
            self._send_to_loop(to_loop)

    def _push(self, job: Job) -> None:
        # Under self._lock.
        delay = (job.run_at - utcnow()).total_seconds() if job.run_at is not None else 0.0
        if delay <= 0:
            self._ready.push(job)
            return
        entry = (time.monotonic() + delay, next(self._seq), job)
        heapq.heappush(self._delayed, entry)
        if self._timer is None:
            self._timer = threading.Thread(target=self._tick, name="unified-jobs-timer", daemon=True)
            self._timer.start()
        elif self._delayed[0] is entry:
            self._cond.notify_all()  # the timer sleeps until a later one

    def _dispatch(self, for_me: bool = False, *, locked: bool = False) -> tuple[list[Job] | None, Job | None]:
        """Give free places to the best ready jobs: (the async ones, for the caller to start;
        with ``for_me``, the first sync one, for the calling pool thread to run itself).

        Other sync jobs go to the pool threads' queue: each of its jobs has a place, and there
        is a thread per place, so a thread is (or soon will be) there for it. Needs no lock
        (``locked``: the caller holds it). A place is taken before a job and given back after
        looking again: whoever adds a ready job looks for a place after adding it, so a job
        and a free place never both wait, whatever the order.
        """
        to_loop: list[Job] | None = None
        mine: Job | None = None
        places = self._places
        while True:
            try:
                places.pop()
            except IndexError:
                break
            job = self._ready.take()
            if job is None or self._stopped:
                places.append(None)
                if job is not None:  # close() emptied the FIFOs meanwhile: not this one
                    self._not_run([job])
                self._wake_closer(locked)
                if job is None and self._ready:
                    continue
                break
            self._running[job.id] = job
            if self.executor.is_async(job.name):
                if to_loop is None:
                    to_loop = [job]
                else:
                    to_loop.append(job)
            elif for_me and mine is None:
                mine = job
            else:
                self._sync_jobs.put(job)
        return to_loop, mine

    def _wake_closer(self, locked: bool) -> None:
        """A place was given back: a close() waiting for the pool to empty looks again."""
        if self._draining:
            if locked:
                self._cond.notify_all()
            else:
                with self._cond:
                    self._cond.notify_all()

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._loop_thread = threading.Thread(
            target=loop.run_forever, name="unified-jobs-async-loop", daemon=True
        )
        self._loop_thread.start()
        for n in range(self._concurrency):
            t = threading.Thread(target=self._work, name=f"unified-jobs-worker-{n}", daemon=True)
            t.start()
            self._threads.append(t)
        started_at = utcnow()
        self._heartbeat = Heartbeat(self.store, lambda: self._beat(started_at), self._heartbeat_interval)
        self._heartbeat.start()

    # -- running sync jobs (pool threads) ----------------------------------------------------

    def _work(self) -> None:
        take = self._sync_jobs.get
        job = take()
        while job is not None:
            retry: Job | None = None
            try:
                if not self.store.record_started(job).cancelled:
                    parent = self._parents.get(job.id) if self._parents else None
                    outcome = self.executor.run(job, run_coroutine=self._on_loop, parent=parent)
                    retry = self._settle(job, outcome)
            except BaseException:  # even SystemExit from a job leaves the pool's books right
                mine = self._finish(job, retry, on_loop=False)
                if mine is not None:  # this thread ends: another one runs it
                    self._sync_jobs.put(mine)
                raise
            job = self._finish(job, retry, on_loop=False) or take()

    def _on_loop(self, coro: Coroutine[Any, Any, Any]) -> Any:
        # Only for a job dispatched as sync whose perform turned out to be a coroutine.
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- running async jobs (the loop) -------------------------------------------------------

    def _send_to_loop(self, jobs: list[Job]) -> None:
        """Start async jobs from a thread other than the loop's."""
        self._inbox.extend(jobs)
        if not self._inbox_armed:  # read after the extend: see _take_inbox
            self._inbox_armed = True
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._take_inbox)

    def _take_inbox(self) -> None:
        # Disarm before emptying: a job added after the last popleft finds it disarmed and
        # arms it again; one added before is started here.
        self._inbox_armed = False
        inbox = self._inbox
        while inbox:
            self._start_task(inbox.popleft())

    def _start_task(self, job: Job) -> None:
        assert self._loop is not None
        token = self.executor.new_token()
        task = self._loop.create_task(self._arun(job, token))
        token.bind_task(task)  # before it runs: arun need not look it up
        self._tasks[token] = task

    async def _arun(self, job: Job, token: CancelToken) -> None:
        retry: Job | None = None
        try:
            if not self.store.record_started(job).cancelled:
                parent = self._parents.get(job.id) if self._parents else None
                outcome = await self.executor.arun(job, token=token, parent=parent)
                retry = self._settle(job, outcome)
        finally:
            del self._tasks[token]
            self._finish(job, retry, on_loop=True)

    # -- settling ----------------------------------------------------------------------------

    def _settle(self, job: Job, outcome: Outcome) -> Job | None:
        """Record how the attempt went; the next attempt to schedule, if it is to be retried."""
        self.store.record_outcome(job, outcome)
        kind = outcome.kind
        if kind == "succeeded":
            return None
        if kind == "retry":
            logger.warning(
                "job %s (%s) attempt %d failed, retrying in %.1fs: %s",
                job.id,
                job.name,
                outcome.attempt,
                outcome.delay,
                outcome.error_text,
            )
            return replace(job, attempt=job.attempt + 1, run_at=outcome.retry_at)
        if kind in ("failed", "rejected"):
            logger.error(
                "job %s (%s) failed: %s", job.id, job.name, outcome.error_text, exc_info=outcome.error
            )
        return None

    def _finish(self, job: Job, retry: Job | None, *, on_loop: bool) -> Job | None:
        """``job`` ended: its place goes to the best ready job, or back to the pool.

        From a pool thread, returns the next job if it is sync: for that thread to run.
        """
        self._running.pop(job.id, None)
        if retry is None and self._parents:
            self._parents.pop(job.id, None)
        if retry is None and not self._stopped:
            # The fast way: hand the place on. While this job holds its place the pool is not
            # idle, so close() is still waiting, or stopped it with jobs running.
            following = self._ready.take()
            if following is not None:
                if self._stopped:  # close() emptied the FIFOs meanwhile: not this one
                    self._not_run([following])
                else:
                    self._running[following.id] = following
                    if self.executor.is_async(following.name):
                        if on_loop:
                            self._start_task(following)
                        else:
                            self._send_to_loop([following])
                        return None
                    if not on_loop:
                        return following
                    self._sync_jobs.put(following)
                    return None
        not_retried = False
        if retry is not None:
            with self._lock:
                if self._stopped:
                    not_retried = True
                else:
                    self._push(retry)
        self._places.append(None)
        to_loop, mine = self._dispatch(not on_loop)
        self._wake_closer(False)
        if to_loop:
            if on_loop:
                for next_job in to_loop:
                    self._start_task(next_job)
            else:
                self._send_to_loop(to_loop)
        if not_retried:
            assert retry is not None
            self._parents.pop(retry.id, None)
            self.store.cancel(retry.id)
            logger.error(
                "job %s (%s) was not retried: the app shut down first; args=%s",
                retry.id,
                retry.name,
                retry.kwargs_json,
            )
        return mine

    # -- delayed jobs (the timer thread) -----------------------------------------------------

    def _tick(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
                now = time.monotonic()
                delayed = self._delayed
                while delayed and delayed[0][0] <= now:
                    self._ready.push(heapq.heappop(delayed)[2])
                to_loop = self._dispatch(locked=True)[0] if self._places else None
                if not to_loop:
                    self._cond.wait(delayed[0][0] - now if delayed else None)
                    continue
            self._send_to_loop(to_loop)

    def cancel(self, job_id: str) -> bool:
        if self.store.cancel(job_id):
            with self._lock:  # a delayed job leaves the heap (close() does not wait for it)
                kept = [entry for entry in self._delayed if entry[2].id != job_id]
                if len(kept) != len(self._delayed):
                    self._parents.pop(job_id, None)
                    heapq.heapify(kept)
                    self._delayed = kept
                    self._cond.notify_all()
            return True
        return self.executor.cancel(job_id)

    def run_now(self, job_id: str) -> bool:
        """A delayed job (or a retry waiting for its backoff) leaves the timer's heap for the
        ready jobs, and its record says so."""
        with self._lock:
            entry = next((e for e in self._delayed if e[2].id == job_id), None)
            if entry is None or not self.store.run_now(job_id):
                return False
            self._delayed.remove(entry)
            heapq.heapify(self._delayed)
            self._ready.push(entry[2])
            to_loop = self._dispatch(locked=True)[0] if self._places else None
        if to_loop:
            self._send_to_loop(to_loop)
        return True

    # -- stopping ----------------------------------------------------------------------------

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._stopped:
                return
            self._draining += 1
            try:
                while wait and (self._ready or self._delayed or len(self._places) < self._concurrency):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._cond.wait(remaining)
            finally:
                self._draining -= 1
            if self._stopped:  # another close() finished meanwhile
                return
            self._stopped = True
            not_run = self._ready.take_all() + [j for *_, j in sorted(self._delayed)]
            self._delayed.clear()
            still_running = list(self._running.values())
            idle = len(self._places) == self._concurrency
            self._cond.notify_all()
        for _ in self._threads:  # each pool thread ends when it takes one of these
            self._sync_jobs.put(None)
        self._not_run(not_run)
        for job in still_running:
            logger.error("job %s (%s) was still running at shutdown and may not finish", job.id, job.name)
        if self._loop is not None and idle:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def _beat(self, started_at: datetime) -> WorkerBeat:
        """The pool's heartbeat, into its own store (for a dashboard in this process): kind
        ``in-process``, which takes jobs from memory and never polls (no ``polled_at``)."""
        return WorkerBeat(
            id=f"in-process@{socket.gethostname()}:{os.getpid()}",
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=tuple(sorted({w.queue for w in list(self.executor.workers.values())})),
            concurrency=self._concurrency,
            current=tuple(sorted(self._running)),
            started_at=started_at,
            beat_at=utcnow(),
            kind=IN_PROCESS,
            interval=self._heartbeat_interval,
        )

    def _not_run(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._parents.pop(job.id, None)
            self.store.cancel(job.id)
            logger.error(
                "job %s (%s) was not run: the app shut down first; queue=%s run_at=%s args=%s",
                job.id,
                job.name,
                job.queue,
                job.run_at,
                job.kwargs_json,
            )
