"""SQLite calls and ``fork()`` kept apart in one process.

A process that forks while one of its threads is inside SQLite (a worker's lease heartbeat,
its ack writer, a beat to the job store) gives the child a copy of SQLite's internal mutexes
as they were at that instant, some of them locked by a thread the child does not have. The
child's first SQLite call then waits for good: Celery's prefork pool forks a new pool process
whenever one ends (a job that killed its process, a hard time limit, ``max_tasks_per_child``),
and the jobs sent to that process stayed ``processing`` and never ran. Measured with plain
``sqlite3``: 1 to 4 children of 300 hung, forked beside two threads writing to a database.

The guard counts the threads inside SQLite (``held``; the SQL engines hold it from a pooled
connection's checkout to its checkin, and while connecting) and makes ``fork()`` wait until
there are none, and new ones wait until the fork is done. A fork waits at most
``FORK_WAIT_SEC`` (a thread can wait on SQLite's busy timeout meanwhile), then goes ahead
with a warning.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["FORK_WAIT_SEC", "ForkGuard", "guard"]

logger = logging.getLogger(__name__)

#: The longest a fork waits for the threads inside SQLite to come out (seconds).
FORK_WAIT_SEC = 30.0


class ForkGuard:
    def __init__(self) -> None:
        self._reset()

    def _reset(self, own: int = 0) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._forking = False
        #: Holds by thread (its ident): the forking thread's own do not hold a fork back.
        self._holds: dict[int, int] = {threading.get_ident(): own} if own else {}
        self._busy = own

    def enter(self) -> int:
        """One more hold, by the calling thread; returns its ident, for ``leave``."""
        ident = threading.get_ident()
        with self._cond:
            if not self._holds.get(ident):  # a thread inside already goes on (re-entry)
                while self._forking:
                    self._cond.wait()
            self._holds[ident] = self._holds.get(ident, 0) + 1
            self._busy += 1
        return ident

    def leave(self, ident: int) -> None:
        """Release a hold ``enter`` returned ``ident`` for (a connection's checkin may come
        from another thread than its checkout)."""
        with self._cond:
            count = self._holds.get(ident, 0)
            if count <= 0:
                return  # not held (a hold from before a fork, in the child)
            if count == 1:
                del self._holds[ident]
            else:
                self._holds[ident] = count - 1
            self._busy -= 1
            if self._forking:
                self._cond.notify_all()

    @contextmanager
    def held(self) -> Iterator[None]:
        ident = self.enter()
        try:
            yield
        finally:
            self.leave(ident)

    def before_fork(self) -> None:
        self._cond.acquire()
        self._forking = True
        own = self._holds.get(threading.get_ident(), 0)
        deadline = time.monotonic() + FORK_WAIT_SEC
        while self._busy > own:
            left = deadline - time.monotonic()
            if left <= 0:
                logger.warning(
                    "forking while %d thread(s) are still inside SQLite after %.0f s: the child "
                    "may hang on its first SQLite call",
                    len(self._holds) - (1 if own else 0),
                    FORK_WAIT_SEC,
                )
                break
            self._cond.wait(left)

    def after_in_parent(self) -> None:
        self._forking = False
        self._cond.notify_all()
        self._cond.release()

    def after_in_child(self) -> None:
        # The child's one thread is the one that forked; the others' holds are not its own.
        self._reset(self._holds.get(threading.get_ident(), 0))


#: The process' guard.
guard = ForkGuard()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=guard.before_fork,
        after_in_parent=guard.after_in_parent,
        after_in_child=guard.after_in_child,
    )
