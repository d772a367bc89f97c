"""A schedule: which worker runs with which arguments, and when (a cron expression or a fixed
period), and the ticks it has between two instants.

Ticks are computed the same way by every scheduler process, so they can agree on each one
through the schedule state alone: a period (``every``) ticks at whole multiples of itself
since 1970-01-01 UTC (``every=timedelta(hours=1)`` runs on the hour), and a cron expression
ticks in its time zone (UTC unless one is given). Ticks are aware UTC datetimes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]

__all__ = [
    "EPOCH",
    "MAX_CATCH_UP",
    "MISSED_POLICIES",
    "ON_TIME",
    "MissedPolicy",
    "Schedule",
    "check_cron",
    "check_every",
    "check_name",
    "check_timezone",
]

MissedPolicy = Literal["latest", "all", "skip"]
MISSED_POLICIES: tuple[str, ...] = get_args(MissedPolicy)

#: ``missed: all`` enqueues at most this many missed ticks of a schedule (the newest ones).
MAX_CATCH_UP = 100
#: ``missed: skip`` still runs the newest due tick if it is at most this old (it is the current
#: tick, not a missed one: a scheduler pass is seldom exactly on time).
ON_TIME = timedelta(seconds=60)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")


def check_name(name: object) -> str:
    """A schedule name: a non-empty string of at most 200 printable characters."""
    if not isinstance(name, str) or not name.strip() or not _NAME.match(name):
        raise ValueError(f"a schedule name is a non-empty string of up to 200 characters, got {name!r}")
    return name


def check_cron(expression: object) -> str:
    """A standard five-field cron expression (minute hour day-of-month month day-of-week), or
    one of ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``. ``ValueError`` says
    what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError(f"a cron expression is a string such as '*/5 * * * *', got {expression!r}")
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text.lower() not in _ALIASES:
            raise ValueError(f"unknown cron alias {text!r}; the aliases are {', '.join(_ALIASES)}")
        return text.lower()
    fields = text.split(" ")
    if len(fields) != 5:
        hint = (
            "; for a period in seconds use every: instead of a six-field expression"
            if len(fields) == 6
            else ""
        )
        raise ValueError(
            f"cron expression {text!r} has {len(fields)} fields, not 5 "
            f"(minute hour day-of-month month day-of-week, e.g. '0 2 * * *'){hint}"
        )
    try:
        croniter(text, EPOCH)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"invalid cron expression {text!r}: {exc}") from None
    return text


def check_timezone(tz: object) -> tzinfo:
    """A time zone: an IANA name (``"Europe/Paris"``) or a ``tzinfo``; ``None`` is UTC."""
    if tz is None:
        return timezone.utc
    if isinstance(tz, tzinfo):
        return tz
    if isinstance(tz, str) and tz.strip():
        if tz.strip().upper() == "UTC":
            return timezone.utc
        try:
            return ZoneInfo(tz.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {tz!r}; give an IANA name such as 'Europe/Paris' or 'UTC'"
            ) from None
    raise ValueError(f"a time zone is an IANA name such as 'Europe/Paris', got {tz!r}")


def check_every(every: object) -> timedelta:
    """A period: a ``timedelta`` of at least one second."""
    if isinstance(every, bool) or not isinstance(every, timedelta):
        raise ValueError(f"every= takes a datetime.timedelta, got {every!r}")
    if every < timedelta(seconds=1):
        raise ValueError(f"every= must be at least one second, got {every}")
    return every


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(fold=0)


def _describe_period(every: timedelta) -> str:
    seconds = every.total_seconds()
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"every {int(seconds // size)}{unit}"
    return f"every {seconds:g}s"


@dataclass(frozen=True)
class Schedule:
    """A recurring job: ``worker`` (a registered worker's name) with ``args``, on ``cron`` (in
    ``tz``) or ``every``. ``missed`` is None to follow the app's ``scheduler.missed``."""

    name: str
    worker: str
    #: The arguments as JSON-ready data (already validated against the worker's model).
    args: Mapping[str, Any]
    cron: str | None = None
    every: timedelta | None = None
    tz: tzinfo = timezone.utc
    missed: MissedPolicy | None = None
    tags: tuple[str, ...] = ()
    queue: str | None = None
    #: When this process defined it: a schedule with no state yet runs from its next tick.
    since: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    #: ``"code"`` (``jobs.schedule``) or ``"config"`` (``scheduler.jobs``).
    source: str = "code"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ValueError(f"schedule {self.name!r} needs exactly one of cron or every")

    @property
    def expression(self) -> str:
        """How it ticks, for people: ``0 2 * * * (Europe/Paris)`` or ``every 5m``."""
        if self.every is not None:
            return _describe_period(self.every)
        zone = "UTC" if self.tz is timezone.utc else str(self.tz)
        return f"{self.cron} ({zone})"

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after ``after``."""
        if self.every is not None:
            period = self.every // _US
            k = (after - EPOCH) // _US // period + 1
            return EPOCH + timedelta(microseconds=k * period)
        it = croniter(self.cron, after.astimezone(self.tz))
        return _utc(it.get_next(datetime))

    def next_run(self, last_tick: datetime | None, now: datetime) -> datetime | None:
        """When the next tick runs, given the newest one enqueued (``TickRecord.last_tick``):
        ``None`` if one is due now (missed, or a scheduler is about to take it)."""
        if last_tick is not None and self.latest_tick(now) > last_tick:
            return None
        return self.next_tick(max(last_tick or self.since, now))

    def latest_tick(self, at: datetime) -> datetime:
        """The newest tick at or before ``at``."""
        if self.every is not None:
            period = self.every // _US
            k = (at - EPOCH) // _US // period
            return EPOCH + timedelta(microseconds=k * period)
        # croniter works in whole seconds: start just after ``at``'s second, step back.
        start = at.astimezone(self.tz).replace(microsecond=0) + timedelta(seconds=1)
        return _utc(croniter(self.cron, start).get_prev(datetime))

    def ticks(
        self, after: datetime, until: datetime, limit: int = MAX_CATCH_UP
    ) -> tuple[list[datetime], int]:
        """The ticks ``t`` with ``after < t <= until``: up to ``limit`` of the newest, oldest
        first, and how many there are in all (counted up to ``limit + 1``, since more is
        "too many" either way)."""
        if until <= after:
            return [], 0
        newest = self.latest_tick(until)
        if newest <= after:
            return [], 0
        if self.every is not None:
            period = self.every // _US
            first = (after - EPOCH) // _US // period + 1
            last = (newest - EPOCH) // _US // period
            total = int(last - first + 1)
            start = max(first, last - limit + 1)
            found = [EPOCH + timedelta(microseconds=k * period) for k in range(start, last + 1)]
            return found, total
        found = [newest]
        it = croniter(self.cron, newest.astimezone(self.tz))
        while len(found) <= limit:
            tick = _utc(it.get_prev(datetime))
            if tick <= after:
                break
            found.append(tick)
        total = len(found)
        return sorted(found[:limit]), total
