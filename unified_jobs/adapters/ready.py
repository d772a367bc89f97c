"""``ReadyJobs``: the in-process pool's ready jobs, a FIFO per priority, highest first.

Taking a job needs no lock: each FIFO is a ``deque`` (atomic ``append``/``popleft``), and the
set of priorities only grows (the tuple of levels is replaced whole), so a reader on another
thread sees either the old or the new one. Adding a job of a *new* priority must happen under
the owner's lock; adding one to a known priority need not (``fifo``).
"""

from __future__ import annotations

from collections import deque

from unified_jobs.core.job import Job

__all__ = ["ReadyJobs"]


class ReadyJobs:
    __slots__ = ("_fifos", "_levels")

    def __init__(self) -> None:
        self._fifos: dict[int, deque[Job]] = {}
        self._levels: tuple[int, ...] = ()  # negated priorities, ascending

    def fifo(self, priority: int | None) -> deque[Job] | None:
        """The FIFO of a priority that has one already (to append to without the lock)."""
        return self._fifos.get(-(priority or 0))

    def push(self, job: Job) -> None:
        """Add a ready job. Under the owner's lock."""
        level = -(job.priority or 0)
        fifo = self._fifos.get(level)
        if fifo is None:
            fifo = self._fifos[level] = deque()
            self._levels = tuple(sorted((*self._levels, level)))
        fifo.append(job)

    def take(self) -> Job | None:
        """The best ready job, taken off its FIFO; None if there is none."""
        fifos = self._fifos
        for level in self._levels:
            fifo = fifos.get(level)
            if fifo:
                try:
                    return fifo.popleft()
                except IndexError:  # another thread took the last one meanwhile
                    continue
        return None

    def __bool__(self) -> bool:
        fifos = self._fifos
        return any(fifos.get(level) for level in self._levels)

    def take_all(self) -> list[Job]:
        """Every ready job, best first (taken one by one: a job ending meanwhile may take one)."""
        taken: list[Job] = []
        for level in self._levels:
            fifo = self._fifos[level]
            while True:
                try:
                    taken.append(fifo.popleft())
                except IndexError:
                    break
        return taken
