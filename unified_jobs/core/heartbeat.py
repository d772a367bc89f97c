"""What a worker's heartbeat (``core.monitor.WorkerBeat``) says: whether the worker is alive,
whether it stalled, how long a store keeps the beat, and the beat as JSON.

One rule for everyone who reads beats (``doctor --workers``, the dashboard), so that they
agree:

- *gone*: the last beat is older than ``ALIVE_INTERVALS`` of the worker's own intervals (plus
  ``ALIVE_MARGIN``): the process died, or its heartbeat thread did.
- *stalled*: alive, yet when it wrote its last beat it had not asked its queues for jobs for
  more than ``stale_after`` seconds, while it had a free slot. The gap is measured on the
  worker's own clock (``beat_at - polled_at``), so clock skew between hosts does not count.
  A worker every slot of which is busy (long jobs) is not stalled: it has no reason to poll.
- *stopping*: a warm shutdown is under way; it no longer polls, on purpose.

Pure: the stores and the CLI call these; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from unified_jobs.core.job import aware, utcnow
from unified_jobs.core.monitor import WorkerBeat

__all__ = [
    "ALIVE_INTERVALS",
    "ALIVE_MARGIN",
    "DEFAULT_STALE_AFTER",
    "IN_PROCESS",
    "KEEP_AT_LEAST",
    "KEEP_INTERVALS",
    "STOPPING",
    "Liveness",
    "Verdict",
    "beat_from_json",
    "beat_to_json",
    "expires_at",
    "is_alive",
    "judge",
]

#: A beat older than this many of its worker's intervals is a dead worker's...
ALIVE_INTERVALS = 2.0
#: ...plus these seconds: a slow store write, clocks a little apart between hosts.
ALIVE_MARGIN = 5.0
#: Stores keep a beat this many intervals (at least ``KEEP_AT_LEAST`` seconds), so that a
#: worker that died without saying so is shown as gone for a while, then forgotten.
KEEP_INTERVALS = 6.0
KEEP_AT_LEAST = 60.0
#: Seconds without a poll after which a live worker with a free slot is stalled, unless
#: ``workers.stale_after`` or ``doctor --stale-after`` says otherwise. Every built-in kind
#: polls (or, on RabbitMQ, checks its consumer) at least every two seconds while it has room.
DEFAULT_STALE_AFTER = 30.0
#: ``WorkerBeat.kind`` of a BackgroundAsync pool: it takes jobs from memory, never polls.
IN_PROCESS = "in-process"
#: ``WorkerBeat.extra["state"]`` of a worker in a warm shutdown.
STOPPING = "stopping"

#: ``ok``; ``busy``: would be stalled, but every slot is taken; ``stalled``; ``stopping``;
#: ``gone``.
Verdict = Literal["ok", "busy", "stalled", "stopping", "gone"]


def expires_at(beat: WorkerBeat) -> datetime:
    """When a store may forget ``beat``."""
    return beat.beat_at + timedelta(seconds=max(KEEP_INTERVALS * beat.interval, KEEP_AT_LEAST))


def is_alive(beat: WorkerBeat, now: datetime | None = None) -> bool:
    """Whether the worker that wrote ``beat`` still beats (see the module docstring)."""
    age = ((now or utcnow()) - beat.beat_at).total_seconds()
    return age <= ALIVE_INTERVALS * beat.interval + ALIVE_MARGIN


@dataclass(frozen=True, slots=True)
class Liveness:
    """What a beat says about its worker, as of ``now``."""

    verdict: Verdict
    #: Seconds since the beat was written (the reader's clock against the worker's).
    beat_age: float
    #: Seconds since the worker last polled, as of now; ``None``: it never polled (or, in
    #: process, never does).
    poll_age: float | None
    #: Seconds it had gone without polling when it wrote the beat (the worker's own clock):
    #: what ``stale_after`` is compared with. ``None`` for an in-process pool.
    poll_gap: float | None
    #: Why, in words, for ``stalled``, ``busy``, ``stopping`` and ``gone``.
    reason: str = ""

    @property
    def failing(self) -> bool:
        """Whether a probe of this worker fails."""
        return self.verdict == "stalled"


def judge(beat: WorkerBeat, stale_after: float, now: datetime | None = None) -> Liveness:
    """The verdict on ``beat``'s worker: see the module docstring."""
    now = now or utcnow()
    beat_age = max(0.0, (now - beat.beat_at).total_seconds())
    poll_age = None if beat.polled_at is None else max(0.0, (now - beat.polled_at).total_seconds())
    if beat.kind == IN_PROCESS:
        gap = None
    else:
        # Never polled since it started: the whole time since the start counts.
        since = beat.polled_at or beat.started_at
        gap = max(0.0, (beat.beat_at - since).total_seconds())
    if not is_alive(beat, now):
        return Liveness("gone", beat_age, poll_age, gap, f"no beat for {beat_age:.0f} s")
    if beat.extra.get("state") == STOPPING:
        return Liveness("stopping", beat_age, poll_age, gap, "in a warm shutdown: no longer takes jobs")
    if gap is None or gap <= stale_after:
        return Liveness("ok", beat_age, poll_age, gap)
    what = "has not asked its queues for jobs" if beat.polled_at is not None else "has never polled"
    free = beat.concurrency - len(beat.current)
    if free <= 0:
        why = f"{what} for {gap:.0f} s, but all {beat.concurrency} slots are busy"
        return Liveness("busy", beat_age, poll_age, gap, why)
    why = (
        f"{what} for {gap:.0f} s (more than {stale_after:g} s) while {free} of its "
        f"{beat.concurrency} slots are free"
    )
    return Liveness("stalled", beat_age, poll_age, gap, why)


def beat_to_json(beat: WorkerBeat) -> dict[str, Any]:
    """``beat`` as a JSON-ready mapping (times as ISO 8601 strings): the heartbeat file."""
    return {
        "id": beat.id,
        "host": beat.host,
        "pid": beat.pid,
        "kind": beat.kind,
        "queues": list(beat.queues),
        "concurrency": beat.concurrency,
        "current": list(beat.current),
        "started_at": beat.started_at.isoformat(),
        "beat_at": beat.beat_at.isoformat(),
        "polled_at": beat.polled_at.isoformat() if beat.polled_at is not None else None,
        "interval": beat.interval,
        "extra": dict(beat.extra),
    }


def beat_from_json(data: Mapping[str, Any]) -> WorkerBeat:
    """The beat ``beat_to_json`` gave; ``ValueError`` (or ``KeyError``, ``TypeError``) if
    ``data`` is not one."""
    polled = data.get("polled_at")
    return WorkerBeat(
        id=str(data["id"]),
        host=str(data["host"]),
        pid=int(data["pid"]),
        kind=str(data.get("kind") or "worker"),
        queues=tuple(str(q) for q in data["queues"]),
        concurrency=int(data["concurrency"]),
        current=tuple(str(j) for j in data["current"]),
        started_at=aware(datetime.fromisoformat(data["started_at"])),
        beat_at=aware(datetime.fromisoformat(data["beat_at"])),
        polled_at=aware(datetime.fromisoformat(polled)) if polled else None,
        interval=float(data["interval"]),
        extra={str(k): str(v) for k, v in (data.get("extra") or {}).items()},
    )
