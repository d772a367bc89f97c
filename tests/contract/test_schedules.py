"""Recurring jobs, the same on every backend: ``jobs.schedule`` and ``jobs.run_schedule_once``
against the backend's own schedule state (memory, the Redis hash, the SQL table)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tests.contract.conftest import Harness
from tests.contract.contract_app import Echo
from unified_jobs.scheduler import identity

HOUR = timedelta(hours=1)


def test_a_tick_is_enqueued_once_and_runs(harness: Harness) -> None:
    jobs = harness.jobs
    schedule = jobs.schedule(Echo, {"n": 1, "label": "tick"}, every=HOUR, name=f"hourly-{harness.backend}")
    assert jobs.schedules[schedule.name] is schedule
    first = schedule.next_tick(schedule.since)

    assert jobs.run_schedule_once(at=schedule.since) == [], "a new schedule starts from its next tick"
    (handle,) = jobs.run_schedule_once(at=first + timedelta(seconds=1))
    assert (handle.worker, handle.queue) == ("contract.Echo", "default")
    assert jobs.run_schedule_once(at=first + timedelta(seconds=2)) == [], "the same tick: nothing"
    assert jobs.run_schedule_once(at=first + timedelta(minutes=30)) == []

    (rec,) = harness.wait_for_count(1)
    assert rec["job"] == handle.id
    assert rec["args"]["n"] == 1 and rec["args"]["label"] == "tick"

    record = jobs.adapter.schedule_state().get([schedule.name])[schedule.name]
    assert (record.last_tick, record.last_by, record.last_job_id) == (first, identity(), handle.id)

    (second,) = jobs.run_schedule_once(at=first + HOUR)
    recs = harness.wait_for_count(2)
    assert sorted(r["job"] for r in recs) == sorted([handle.id, second.id])


def test_missed_ticks_run_once_by_default_or_all_of_them(harness: Harness) -> None:
    jobs = harness.jobs
    latest = jobs.schedule(Echo, {"n": 1}, every=HOUR, name=f"latest-{harness.backend}")
    every = jobs.schedule(Echo, {"n": 2}, cron="0 * * * *", name=f"all-{harness.backend}", missed="all")
    start = latest.next_tick(latest.since)
    assert {h.worker for h in jobs.run_schedule_once(at=start)} == {"contract.Echo"}
    harness.wait_for_count(2)

    # Three hours with no scheduler: "latest" runs the newest missed tick once, "all" each one.
    handles = jobs.run_schedule_once(at=start + 3 * HOUR + timedelta(minutes=1))
    assert len(handles) == 1 + 3
    recs = harness.wait_for_count(2 + 4)
    assert sorted(r["args"]["n"] for r in recs) == [1, 1, 2, 2, 2, 2]
    states = jobs.adapter.schedule_state().get([latest.name, every.name])
    assert states[latest.name].last_tick == states[every.name].last_tick == start + 3 * HOUR
    assert jobs.run_schedule_once(at=start + 3 * HOUR + timedelta(minutes=2)) == []


def test_a_skip_schedule_drops_missed_ticks(harness: Harness) -> None:
    jobs = harness.jobs
    schedule = jobs.schedule(Echo, {"n": 3}, every=HOUR, name=f"skip-{harness.backend}", missed="skip")
    start = schedule.next_tick(schedule.since)
    assert len(jobs.run_schedule_once(at=start)) == 1
    # Two hours and a half later: the newest tick is 30 min old, so it was missed, not due now.
    assert jobs.run_schedule_once(at=start + 2 * HOUR + timedelta(minutes=30)) == []
    record = jobs.adapter.schedule_state().get([schedule.name])[schedule.name]
    assert record.last_tick == start + 2 * HOUR and record.last_job_id is None
    # On time again: the next tick runs.
    assert len(jobs.run_schedule_once(at=start + 3 * HOUR + timedelta(seconds=5))) == 1
    assert len(harness.wait_for_count(2)) == 2


def test_an_explicit_time_must_be_aware(harness: Harness) -> None:
    import pytest

    from unified_jobs.errors import InvalidOptionError

    harness.jobs.schedule(Echo, {"n": 1}, every=HOUR, name=f"aware-{harness.backend}")
    with pytest.raises(InvalidOptionError, match="timezone-aware"):
        harness.jobs.run_schedule_once(at=datetime(2026, 1, 1))
    assert harness.jobs.run_schedule_once(at=datetime.now(timezone.utc) - HOUR) == []
