"""Recurring jobs: schedules (cron or a period), their ticks, and the scheduler pass that
enqueues each tick once however many schedulers run.

This package is pure (no broker or database library): the state it compare-and-sets is the
``ScheduleState`` port, implemented in memory here and by the queue kinds in ``adapters``.
See docs/guides/recurring-jobs.md.
"""

from __future__ import annotations

from unified_jobs.scheduler.book import ScheduleBook, define
from unified_jobs.scheduler.definition import (
    MAX_CATCH_UP,
    MISSED_POLICIES,
    ON_TIME,
    MissedPolicy,
    Schedule,
    check_cron,
    check_timezone,
)
from unified_jobs.scheduler.runner import Enqueued, Plan, Scheduler, identity, plan
from unified_jobs.scheduler.service import Recurring
from unified_jobs.scheduler.state import MemoryScheduleState, ScheduleState, TickRecord

__all__ = [
    "MAX_CATCH_UP",
    "MISSED_POLICIES",
    "ON_TIME",
    "Enqueued",
    "MemoryScheduleState",
    "MissedPolicy",
    "Plan",
    "Recurring",
    "Schedule",
    "ScheduleBook",
    "ScheduleState",
    "Scheduler",
    "TickRecord",
    "check_cron",
    "check_timezone",
    "define",
    "identity",
    "plan",
]
