"""The app's schedules: the ones defined in code (``jobs.schedule``) and the config's
``scheduler.jobs``, bound to registered workers and checked, with errors that name them."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from unified_jobs.core.job import Job
from unified_jobs.errors import ConfigError, InvalidOptionError, NotRegisteredError
from unified_jobs.scheduler.definition import (
    MISSED_POLICIES,
    MissedPolicy,
    Schedule,
    check_cron,
    check_every,
    check_name,
    check_timezone,
)

if TYPE_CHECKING:
    from unified_jobs.config import ScheduleConfig
    from unified_jobs.worker import Worker

__all__ = ["ScheduleBook", "define"]

logger = logging.getLogger("unified_jobs.scheduler")


def _registered(workers: Mapping[str, type[Worker[Any]]]) -> str:
    return ", ".join(sorted(workers)) or "none"


def define(
    name: str,
    worker_cls: type[Worker[Any]],
    args: BaseModel | Mapping[str, Any],
    *,
    cron: str | None = None,
    every: timedelta | None = None,
    tz: str | tzinfo | None = None,
    missed: str | None = None,
    tags: tuple[str, ...] | list[str] | None = None,
    queue: str | None = None,
    since: datetime | None = None,
) -> Schedule:
    """A checked ``Schedule`` of ``jobs.schedule``; ``InvalidOptionError`` names the schedule
    and what is wrong (the arguments are validated against the worker's model)."""
    try:
        name = check_name(name)
    except ValueError as exc:
        raise InvalidOptionError(f"schedule(): {exc}") from None
    where = f"schedule {name!r}"
    if (cron is None) == (every is None):
        raise InvalidOptionError(f"{where}: give either cron= or every=, not both or neither")
    try:
        cron = check_cron(cron) if cron is not None else None
        every = check_every(every) if every is not None else None
        zone = check_timezone(tz)
    except ValueError as exc:
        raise InvalidOptionError(f"{where}: {exc}") from None
    if every is not None and tz is not None:
        raise InvalidOptionError(f"{where}: tz= is for cron schedules; every= ticks are time-zone free")
    if missed is not None and missed not in MISSED_POLICIES:
        raise InvalidOptionError(
            f"{where}: missed= takes one of {', '.join(MISSED_POLICIES)}, got {missed!r}"
        )
    if queue is not None and (not isinstance(queue, str) or not queue.strip()):
        raise InvalidOptionError(f"{where}: queue= takes a non-empty string, got {queue!r}")
    if isinstance(tags, str) or (tags is not None and not all(isinstance(t, str) and t for t in tags)):
        raise InvalidOptionError(f"{where}: tags= takes a list of non-empty strings, got {tags!r}")
    try:
        payload = Job.dump_args(worker_cls.args_model, args)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise InvalidOptionError(
            f"{where}: the arguments do not validate against {worker_cls.args_model.__name__} "
            f"of worker {worker_cls.name}: {exc}"
        ) from None
    return Schedule(
        name=name,
        worker=worker_cls.name,
        args=json.loads(payload),
        cron=cron,
        every=every,
        tz=zone,
        missed=missed,  # type: ignore[arg-type]
        tags=tuple(tags) if tags is not None else tuple(worker_cls.tags),
        queue=queue,
        since=since or datetime.now(timezone.utc),
        source="code",
    )


def _bind(
    name: str, entry: ScheduleConfig, workers: Mapping[str, type[Worker[Any]]], since: datetime
) -> Schedule:
    key = f"scheduler.jobs.{name}"
    worker_cls = workers.get(entry.run)
    if worker_cls is None:
        raise ConfigError(
            f"{key}.run: no registered worker named {entry.run!r}; register it with jobs.register(...) "
            f"before the scheduler runs (registered: {_registered(workers)})"
        )
    try:
        payload = Job.dump_args(worker_cls.args_model, entry.args)
    except ValidationError as exc:
        raise ConfigError(
            f"{key}.args: do not validate against {worker_cls.args_model.__name__} of worker "
            f"{worker_cls.name}: {exc}"
        ) from None
    missed: MissedPolicy | None = entry.missed
    return Schedule(
        name=name,
        worker=worker_cls.name,
        args=json.loads(payload),
        cron=entry.schedule,
        every=timedelta(seconds=entry.every) if entry.every is not None else None,
        tz=check_timezone(entry.timezone),
        missed=missed,
        tags=entry.tags if entry.tags is not None else tuple(worker_cls.tags),
        queue=entry.queue,
        since=since,
        source="config",
    )


class ScheduleBook:
    """The schedules of one app. Config schedules are bound to their workers on first use
    (the first scheduler pass, ``jobs.schedules``, or a scheduler process' start)."""

    def __init__(self, entries: Mapping[str, ScheduleConfig]) -> None:
        self._lock = threading.Lock()
        self._entries = dict(entries)
        self._code: dict[str, Schedule] = {}
        self._bound: dict[str, Schedule] = {}
        self._reported: set[str] = set()
        #: Config schedules count as defined when the app was made.
        self._since = datetime.now(timezone.utc)

    def __bool__(self) -> bool:
        return bool(self._entries or self._code)

    def add(self, schedule: Schedule) -> None:
        with self._lock:
            if schedule.name in self._entries:
                raise InvalidOptionError(
                    f"schedule {schedule.name!r} is already defined in the config (scheduler.jobs."
                    f"{schedule.name}); give this one another name="
                )
            if schedule.name in self._code:
                raise InvalidOptionError(
                    f"schedule {schedule.name!r} is already defined (for worker "
                    f"{self._code[schedule.name].worker}); give this one another name="
                )
            self._code[schedule.name] = schedule

    def bind(self, workers: Mapping[str, type[Worker[Any]]], *, strict: bool) -> dict[str, Schedule]:
        """Every schedule, config ones first. A config schedule that cannot be bound yet (its
        worker is not registered, or its args do not validate) raises ``ConfigError`` if
        ``strict``; else it is left out and logged (once)."""
        with self._lock:
            for name, entry in self._entries.items():
                if name in self._bound:
                    continue
                try:
                    self._bound[name] = _bind(name, entry, workers, self._since)
                except (ConfigError, NotRegisteredError) as exc:
                    if strict:
                        raise
                    if str(exc) not in self._reported:
                        self._reported.add(str(exc))
                        logger.error("%s (the schedule is not run until this is fixed)", exc)
            return {**self._bound, **self._code}
