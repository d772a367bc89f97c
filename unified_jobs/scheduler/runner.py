"""The scheduler pass and its loop.

A pass, for each schedule: read its last tick from the state, work out the due ticks since
then (the missed-tick policy picks which to run), and for each one ``advance`` the state to it;
only the scheduler whose ``advance`` succeeds enqueues that tick. Any number of schedulers may
run passes at once (every worker process, dedicated ``start --scheduler`` processes): no
leader, and a scheduler that dies leaves the others polling.

A tick is never enqueued twice. Where the state is the queue's own SQL database, winning the
tick and writing its job are one transaction: exactly once. Elsewhere a scheduler that dies
between winning a tick and enqueueing its job (a window of milliseconds) loses that one tick.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

from unified_jobs.errors import InvalidOptionError
from unified_jobs.scheduler.definition import MAX_CATCH_UP, ON_TIME, MissedPolicy, Schedule
from unified_jobs.scheduler.state import ScheduleState, TickRecord

__all__ = ["Enqueued", "Plan", "Scheduler", "identity", "plan"]

logger = logging.getLogger("unified_jobs.scheduler")

T = TypeVar("T")

#: Seconds between passes, at most: a pass also runs right after each schedule's next tick.
DEFAULT_INTERVAL = 1.0


def identity() -> str:
    """Who is scheduling: ``host:pid`` (the state's ``last_by``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Plan:
    """What one pass does for one schedule."""

    #: The ticks to enqueue, oldest first (each won by an ``advance`` first).
    run: list[datetime]
    #: Advance the state to this tick without enqueueing it (``missed: skip``, or the starting
    #: point of a new schedule).
    mark: datetime | None = None
    #: How many due ticks there were (counted up to MAX_CATCH_UP + 1).
    due: int = 0


def plan(schedule: Schedule, record: TickRecord | None, at: datetime, policy: MissedPolicy) -> Plan:
    """The due ticks of ``schedule`` at ``at``, given its state ``record`` and the policy.

    A schedule without a record starts from when it was defined (``since``): its first run is
    its first tick after that, and a pass with nothing due records its newest tick as the
    starting point, so that ticks missed while every scheduler is down are still seen.
    """
    last = record.last_tick if record is not None else None
    start = last if last is not None else schedule.since
    ticks, due = schedule.ticks(start, at, MAX_CATCH_UP)
    if not ticks:
        if last is None:
            return Plan(run=[], mark=schedule.latest_tick(max(at, schedule.since)))
        return Plan(run=[])
    newest = ticks[-1]
    if policy == "all":
        return Plan(run=ticks, due=due)
    if policy == "skip" and at - newest > ON_TIME:
        return Plan(run=[], mark=newest, due=due)
    return Plan(run=[newest], due=due)


@dataclass(frozen=True)
class Enqueued(Generic[T]):
    """A tick this scheduler won and enqueued, with what ``enqueue`` returned (a handle)."""

    schedule: str
    tick: datetime
    job: T


class Scheduler(Generic[T]):
    """Runs passes over ``schedules()`` against ``state()``; ``enqueue(schedule, tick,
    transaction)`` enqueues a tick's job (in ``transaction``, a SQLAlchemy connection, when the
    state hands one) and returns its handle (which has an ``id``).

    ``run_once`` is one pass; ``start``/``stop`` run passes in a daemon thread, and
    ``run_forever`` in the calling thread, about every ``interval`` seconds and right after
    each schedule's next tick.
    """

    def __init__(
        self,
        schedules: Callable[[], Sequence[Schedule]],
        state: Callable[[], ScheduleState],
        enqueue: Callable[[Schedule, datetime, Any], T],
        *,
        missed: MissedPolicy = "latest",
        interval: float = DEFAULT_INTERVAL,
        tags: Sequence[str] = (),
        name: str = "unified-jobs-scheduler",
    ) -> None:
        self._schedules = schedules
        self._state = state
        self._enqueue = enqueue
        self.missed = missed
        self.interval = interval
        self.tags = tuple(tags)
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- one pass ----------------------------------------------------------------------------

    def selected(self) -> list[Schedule]:
        found = list(self._schedules())
        if self.tags:
            found = [s for s in found if set(s.tags) & set(self.tags)]
        return found

    def run_once(self, at: datetime | None = None, *, strict: bool = True) -> list[Enqueued[T]]:
        """One pass at ``at`` (an aware datetime; default now). With ``strict``, the first error
        (state unreachable, enqueue failed) is raised after the other schedules had their
        turn; else each is logged."""
        if at is None:
            at = datetime.now(timezone.utc)
        elif not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
            raise InvalidOptionError(f"at= takes a timezone-aware datetime, got {at!r}")
        at = at.astimezone(timezone.utc)
        schedules = self.selected()
        if not schedules:
            return []
        state = self._state()
        records = state.get([s.name for s in schedules])
        who = identity()
        done: list[Enqueued[T]] = []
        first_error: BaseException | None = None
        for schedule in schedules:
            try:
                self._pass_one(schedule, records.get(schedule.name), at, state, who, done)
            except Exception as exc:
                if strict:
                    first_error = first_error or exc
                else:
                    logger.exception(
                        "schedule %s: the scheduler pass failed; a tick it won and could not enqueue "
                        "is tried again at the next pass where the schedule state is the queue's SQL "
                        "database, and lost elsewhere (the next ticks run as planned)",
                        schedule.name,
                    )
        if first_error is not None:
            raise first_error
        return done

    def _pass_one(
        self,
        schedule: Schedule,
        record: TickRecord | None,
        at: datetime,
        state: ScheduleState,
        who: str,
        done: list[Enqueued[T]],
    ) -> None:
        policy = schedule.missed or self.missed
        todo = plan(schedule, record, at, policy)
        # The starting point of a new schedule is marked by no one; a skip by this scheduler.
        marked = todo.mark is not None and state.advance(schedule.name, todo.mark, who if todo.due else None)
        if marked and todo.due:
            assert todo.mark is not None
            logger.warning(
                "schedule %s: skipped %s missed tick(s) up to %s (missed: skip)",
                schedule.name,
                f"{MAX_CATCH_UP}+" if todo.due > MAX_CATCH_UP else todo.due,
                todo.mark.isoformat(),
            )
        if not todo.run:
            return
        if policy == "all" and todo.due > MAX_CATCH_UP:
            logger.warning(
                "schedule %s: more than %d missed ticks; enqueueing the newest %d only",
                schedule.name,
                MAX_CATCH_UP,
                MAX_CATCH_UP,
            )
        elif policy == "latest" and todo.due > 1:
            logger.info(
                "schedule %s: %s ticks were missed; enqueueing the newest (%s) once (missed: latest)",
                schedule.name,
                f"{MAX_CATCH_UP}+" if todo.due > MAX_CATCH_UP else todo.due - 1,
                todo.run[-1].isoformat(),
            )
        for tick in todo.run:
            job = state.claim(
                schedule.name,
                tick,
                who,
                lambda transaction, tick=tick: self._enqueue(schedule, tick, transaction),  # type: ignore[misc]
            )
            if job is None:
                continue  # another scheduler has it (or a newer one)
            job_id = str(getattr(job, "id", job))
            logger.info("schedule %s: enqueued tick %s as job %s", schedule.name, tick.isoformat(), job_id)
            done.append(Enqueued(schedule.name, tick, job))
            try:
                state.note_job(schedule.name, tick, job_id)
            except Exception:  # the job is enqueued; the record is only for people
                logger.warning("schedule %s: could not record job %s in the state", schedule.name, job_id)

    # -- the loop ----------------------------------------------------------------------------

    def _sleep_time(self) -> float:
        now = datetime.now(timezone.utc)
        wait = self.interval
        try:
            for schedule in self.selected():
                wait = min(wait, (schedule.next_tick(now) - now).total_seconds())
        except Exception:  # a schedule that cannot be bound yet: poll at the interval
            wait = self.interval
        # A little jitter spreads the schedulers' compare-and-sets over a few milliseconds.
        return max(0.01, wait) + random.uniform(0.002, 0.03)

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Run passes until ``stop`` (or ``self.stop()``) is set; errors are logged, never raised.
        The first pass is after the first sleep, so workers registered right after the app
        was made are bound."""
        stop = stop or self._stop
        failing = ""
        while not stop.wait(self._sleep_time()):
            try:
                self.run_once(strict=False)
            except Exception as exc:
                if str(exc) != failing:  # once per distinct error, not every second
                    logger.exception("scheduler pass failed; retrying every %.1fs", self.interval)
                failing = str(exc)
            else:
                if failing:
                    logger.info("scheduler passes work again")
                failing = ""

    def start(self) -> None:
        """Run passes in a daemon thread (no-op if it runs already)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self.run_forever, name=self._name, daemon=True)
            self._thread.start()
        logger.info("scheduler started (%s)", identity())

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, waiting up to ``timeout`` seconds for a pass in progress."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
