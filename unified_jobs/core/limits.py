"""Time limits and cancellation of a running job.

A sync ``perform`` is stopped the way dramatiq's TimeLimit middleware stops it: one watchdog
thread per process raises ``TimeLimitExceeded`` inside the job's thread (CPython's
``PyThreadState_SetAsyncExc``). The exception arrives at the job's next Python instruction,
so a job blocked in one long C call (a ``time.sleep(60)``, a socket read without a timeout)
sees it only when that call returns. An ``async def perform`` is cancelled at its next
``await`` instead. A cancel request sets the job's ``CancelToken`` (``self.cancelled()``) and
cancels an async job's task; a sync job is never interrupted by a cancel, only told.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from unified_jobs.errors import TimeLimitExceeded

__all__ = ["CancelToken", "Watchdog", "watchdog"]


class CancelToken:
    """Told to a running job: ``cancel()`` asks it to stop; ``expired`` says its time is up."""

    __slots__ = ("_event", "_loop", "_task", "expired")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.expired = False

    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        self._event.set()
        task, loop = self._task, self._loop
        if task is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)

    def bind_task(self, task: asyncio.Task[Any]) -> None:
        """Cancelling the token cancels this task (the running ``async def perform``)."""
        self._task, self._loop = task, task.get_loop()
        if self._event.is_set():
            task.cancel()


@dataclass(order=True)
class _Entry:
    deadline: float
    seq: int
    thread_id: int = field(compare=False)
    token: CancelToken = field(compare=False)
    armed: bool = field(default=True, compare=False)
    fired: bool = field(default=False, compare=False)


class Watchdog:
    """Raises ``TimeLimitExceeded`` in threads whose sync job ran past its deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def arm(self, seconds: float, token: CancelToken) -> _Entry:
        """Start the clock for the calling thread's job; pass the result to ``disarm``."""
        entry = _Entry(time.monotonic() + seconds, next(self._seq), threading.get_ident(), token)
        with self._lock:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                self._pid = os.getpid()  # a forked child starts its own watchdog
                self._heap = []
                self._thread = threading.Thread(target=self._run, name="unified-jobs-watchdog", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, entry)
            self._wake.notify()
        return entry

    def disarm(self, entry: _Entry) -> bool:
        """Stop the clock; True if the limit had fired. Clears an exception not yet raised."""
        with self._lock:
            entry.armed = False
            fired = entry.fired
        if fired:  # it may still be pending in this thread: drop it, the caller knows
            _set_async_exc(entry.thread_id, None)
        return fired

    def _run(self) -> None:
        with self._lock:
            while True:
                while self._heap and not self._heap[0].armed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake.wait()
                    continue
                now = time.monotonic()
                first = self._heap[0]
                if first.deadline > now:
                    self._wake.wait(first.deadline - now)
                    continue
                heapq.heappop(self._heap)
                first.fired = True
                first.token.expired = True
                first.token._event.set()
                _set_async_exc(first.thread_id, TimeLimitExceeded)


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else ctypes.c_void_p(0)
    )


#: The process' watchdog.
watchdog = Watchdog()
