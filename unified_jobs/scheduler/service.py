"""``Recurring``: the recurring jobs of one ``Jobs`` app (its schedules, its scheduler thread),
given how to enqueue a tick and where the state is, so that it needs nothing of the app."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from unified_jobs.core.job import JobHandle
from unified_jobs.scheduler.book import ScheduleBook
from unified_jobs.scheduler.definition import Schedule
from unified_jobs.scheduler.runner import Scheduler
from unified_jobs.scheduler.state import ScheduleState

if TYPE_CHECKING:
    from unified_jobs.config import SchedulerConfig
    from unified_jobs.worker import Worker

__all__ = ["Recurring"]


class Recurring:
    def __init__(
        self,
        config: SchedulerConfig,
        workers: Mapping[str, type[Worker[Any]]],
        state: Callable[[], ScheduleState],
        enqueue: Callable[[Schedule, datetime, Any], JobHandle],
    ) -> None:
        self.config = config
        self.book = ScheduleBook(config.jobs)
        self._workers = workers
        self._state = state
        self._enqueue = enqueue
        self._lock = threading.Lock()
        self._thread: Scheduler[JobHandle] | None = None

    def schedules(self, *, strict: bool = True) -> dict[str, Schedule]:
        """Every schedule (config ones bound to their workers: ``ConfigError`` if one cannot be,
        with ``strict``)."""
        return self.book.bind(self._workers, strict=strict)

    def scheduler(self, tags: Sequence[str] = (), *, strict: bool = False) -> Scheduler[JobHandle]:
        """A scheduler over this app's schedules (only those with one of ``tags``, if given)."""
        return Scheduler(
            lambda: list(self.schedules(strict=strict).values()),
            self._state,
            self._enqueue,
            missed=self.config.missed,
            interval=self.config.interval,
            tags=tags,
        )

    def run_once(self, at: datetime | None = None) -> list[JobHandle]:
        return [done.job for done in self.scheduler(strict=True).run_once(at, strict=True)]

    def start(self) -> None:
        """Run this app's scheduler thread (once)."""
        with self._lock:
            if self._thread is None:
                self._thread = self.scheduler()
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop(timeout)
