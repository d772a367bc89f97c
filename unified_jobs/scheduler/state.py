"""The ``ScheduleState`` port: each schedule's newest tick, kept where every scheduler of the
queue can see it, and advanced by an atomic compare-and-set. Only the scheduler whose
``advance`` succeeds enqueues that tick, so a tick is enqueued once however many schedulers
run, with no leader to elect.

Implementations: ``MemoryScheduleState`` (in-process modes; per process), the Redis hash
``unified_jobs:schedules`` (Redis kind, and the RabbitMQ kind's Redis job store) and the SQL
table ``<prefix>schedules`` (Postgres and SQLite kinds), both in ``adapters``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, TypeVar

__all__ = ["MemoryScheduleState", "ScheduleState", "TickRecord"]

T = TypeVar("T")


@dataclass(frozen=True)
class TickRecord:
    """What the state knows of one schedule."""

    name: str
    #: The newest tick that was enqueued, skipped, or recorded as the starting point.
    last_tick: datetime | None
    #: ``host:pid`` of the scheduler that advanced it (None: the starting point of a new schedule).
    last_by: str | None = None
    #: The job enqueued for ``last_tick`` (None if it was skipped, or not enqueued yet).
    last_job_id: str | None = None
    updated_at: datetime | None = None


class ScheduleState(ABC):
    """Each schedule's newest tick, shared by every scheduler that can reach it."""

    @abstractmethod
    def get(self, names: Sequence[str]) -> dict[str, TickRecord]:
        """The records of these schedules (a schedule without one is left out)."""

    @abstractmethod
    def advance(self, name: str, tick: datetime, by: str | None) -> bool:
        """Atomically: if the schedule has no record, or its ``last_tick`` is older than
        ``tick``, set ``last_tick = tick``, ``last_by = by``, ``last_job_id = None`` and return
        True; else change nothing and return False. Of any number of schedulers advancing to
        the same tick, exactly one gets True."""

    def claim(self, name: str, tick: datetime, by: str, enqueue: Callable[[Any], T]) -> T | None:
        """``advance`` to ``tick`` and, if this scheduler won it, ``enqueue(transaction)`` its
        job; None if another scheduler has the tick. By default the two are one after the other
        (a scheduler that dies between them loses the tick: at most once); a state that can
        enqueue in the very transaction that advances it (the SQL table, when the queue is that
        database) overrides this, and passes that transaction: exactly once."""
        if not self.advance(name, tick, by):
            return None
        return enqueue(None)

    @abstractmethod
    def note_job(self, name: str, tick: datetime, job_id: str) -> None:
        """Record the job enqueued for ``tick``, if ``tick`` is still the schedule's last one."""

    def forget(self, names: Sequence[str]) -> None:  # noqa: B027 - optional
        """Delete these schedules' records (their next pass starts them from now)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


class MemoryScheduleState(ScheduleState):
    """In this process' memory: the schedulers of one process share it, other processes do not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, TickRecord] = {}

    def get(self, names: Sequence[str]) -> dict[str, TickRecord]:
        with self._lock:
            return {n: self._records[n] for n in names if n in self._records}

    def advance(self, name: str, tick: datetime, by: str | None) -> bool:
        with self._lock:
            current = self._records.get(name)
            if current is not None and current.last_tick is not None and current.last_tick >= tick:
                return False
            now = datetime.now(timezone.utc)
            self._records[name] = TickRecord(name, tick, by, None, now)
            return True

    def note_job(self, name: str, tick: datetime, job_id: str) -> None:
        with self._lock:
            current = self._records.get(name)
            if current is not None and current.last_tick == tick:
                self._records[name] = replace(current, last_job_id=job_id)

    def forget(self, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                self._records.pop(name, None)
