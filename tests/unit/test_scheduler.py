"""Recurring jobs without a backend: ticks, the missed-tick policies, the pass against a shared
state, config validation and the errors that name the schedule."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from unified_jobs import Config, Jobs, Worker
from unified_jobs.errors import ConfigError, InvalidOptionError, NotRegisteredError
from unified_jobs.scheduler import (
    MAX_CATCH_UP,
    MemoryScheduleState,
    Schedule,
    Scheduler,
    TickRecord,
    identity,
    plan,
)

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


class ReportArgs(BaseModel):
    day: str


ran: list[str] = []


class Report(Worker[ReportArgs]):
    name = "t.Report"
    tags = ("reports",)

    def perform(self, args: ReportArgs) -> None:
        ran.append(args.day)


def app(scheduler: dict[str, object] | None = None, mode: str = "ForegroundBlocking") -> Jobs:
    data: dict[str, object] = {"workers": {"mode": mode}}
    if scheduler is not None:
        data["scheduler"] = scheduler
    jobs = Jobs(Config.from_dict(data))
    jobs.register(Report)
    return jobs


def hourly(**kw: object) -> Schedule:
    return Schedule(name="h", worker="t.Report", args={}, every=HOUR, since=T0, **kw)  # type: ignore[arg-type]


# -- ticks ---------------------------------------------------------------------------------------


def test_a_period_ticks_at_multiples_of_itself_since_the_epoch() -> None:
    s = Schedule(name="p", worker="w", args={}, every=timedelta(minutes=5), since=T0)
    assert s.next_tick(T0) == T0 + timedelta(minutes=5)
    assert s.next_tick(T0 - timedelta(seconds=1)) == T0
    assert s.latest_tick(T0 + timedelta(minutes=7)) == T0 + timedelta(minutes=5)
    assert s.latest_tick(T0) == T0
    ticks, total = s.ticks(T0, T0 + timedelta(minutes=16))
    assert ticks == [T0 + timedelta(minutes=m) for m in (5, 10, 15)] and total == 3
    assert s.expression == "every 5m"


def test_cron_ticks_in_its_time_zone_across_daylight_saving() -> None:
    paris = ZoneInfo("Europe/Paris")
    s = Schedule(name="c", worker="w", args={}, cron="0 2 * * *", tz=paris, since=T0)
    # 2026-03-29: clocks jump from 02:00 to 03:00 in Paris; 02:00 does not exist that day.
    nxt = s.next_tick(datetime(2026, 3, 27, 12, tzinfo=UTC))
    assert nxt == datetime(2026, 3, 28, 1, tzinfo=UTC)  # 02:00 CET
    assert s.next_tick(datetime(2026, 3, 30, 12, tzinfo=UTC)) == datetime(2026, 3, 31, 0, tzinfo=UTC)  # CEST
    assert s.latest_tick(nxt) == nxt
    assert s.latest_tick(nxt - timedelta(microseconds=1)) < nxt
    assert s.expression == "0 2 * * * (Europe/Paris)"
    assert all(t.tzinfo is UTC for t in s.ticks(T0, T0 + timedelta(days=3))[0])


def test_ticks_are_capped_to_the_newest() -> None:
    s = Schedule(name="m", worker="w", args={}, cron="* * * * *", since=T0)
    ticks, total = s.ticks(T0, T0 + timedelta(days=1), limit=MAX_CATCH_UP)
    assert len(ticks) == MAX_CATCH_UP and total == MAX_CATCH_UP + 1
    assert ticks[-1] == T0 + timedelta(days=1) and ticks == sorted(ticks)
    p = hourly()
    ticks, total = p.ticks(T0, T0 + 500 * HOUR, limit=10)
    assert ticks[0] == T0 + 491 * HOUR and ticks[-1] == T0 + 500 * HOUR and total == 500


# -- plans ---------------------------------------------------------------------------------------


def rec(tick: datetime) -> TickRecord:
    return TickRecord("h", tick, "x:1", "j")


def test_a_new_schedule_starts_from_its_next_tick_and_marks_a_starting_point() -> None:
    s = hourly()
    p = plan(s, None, T0 + timedelta(minutes=30), "latest")
    assert p.run == [] and p.mark == T0  # the newest past tick: later misses are seen
    assert plan(s, None, T0 + HOUR, "latest").run == [T0 + HOUR]
    # a pass "in the past" never marks a point before the schedule existed
    assert plan(s, None, T0 - 5 * HOUR, "latest").mark == T0


@pytest.mark.parametrize(
    ("policy", "run", "mark"),
    [
        ("latest", [T0 + 5 * HOUR], None),
        ("all", [T0 + h * HOUR for h in range(1, 6)], None),
        ("skip", [], T0 + 5 * HOUR),
    ],
)
def test_missed_policies(policy: str, run: list[datetime], mark: datetime | None) -> None:
    p = plan(hourly(), rec(T0), T0 + 5 * HOUR + timedelta(minutes=10), policy)  # type: ignore[arg-type]
    assert (p.run, p.mark, p.due) == (run, mark, 5)


def test_skip_still_runs_the_current_tick() -> None:
    assert plan(hourly(), rec(T0), T0 + 2 * HOUR + timedelta(seconds=3), "skip").run == [T0 + 2 * HOUR]


def test_nothing_is_due_twice() -> None:
    assert plan(hourly(), rec(T0 + HOUR), T0 + HOUR + timedelta(minutes=59), "all").run == []


# -- the pass --------------------------------------------------------------------------------------


def test_many_schedulers_on_one_state_enqueue_each_tick_once() -> None:
    state = MemoryScheduleState()
    enqueued: list[datetime] = []
    lock = threading.Lock()

    def enqueue(_s: Schedule, tick: datetime, _txn: object = None) -> str:
        with lock:
            enqueued.append(tick)
        return f"job-{tick.isoformat()}"

    s = Schedule(name="s", worker="w", args={}, every=timedelta(seconds=1), since=T0)
    schedulers = [Scheduler(lambda: [s], lambda: state, enqueue) for _ in range(8)]
    for second in range(1, 31):
        at = T0 + timedelta(seconds=second, milliseconds=5)
        threads = [threading.Thread(target=sch.run_once, args=(at,)) for sch in schedulers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert enqueued == [T0 + timedelta(seconds=n) for n in range(1, 31)]
    record = state.get(["s"])["s"]
    assert record.last_by == identity() and record.last_job_id == f"job-{enqueued[-1].isoformat()}"


def test_a_failing_enqueue_is_raised_in_a_strict_pass_and_logged_in_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom(_s: Schedule, _t: datetime, _txn: object = None) -> str:
        raise ConnectionError("broker down")

    sch = Scheduler(lambda: [hourly()], MemoryScheduleState, boom)
    with pytest.raises(ConnectionError):
        sch.run_once(T0 + HOUR)
    assert sch.run_once(T0 + 2 * HOUR, strict=False) == []
    assert "could not enqueue" in caplog.text and "lost elsewhere" in caplog.text


def test_tags_select_schedules() -> None:
    tagged = Schedule(name="a", worker="w", args={}, every=HOUR, tags=("x",), since=T0)
    other = Schedule(name="b", worker="w", args={}, every=HOUR, since=T0)
    sch: Scheduler[str] = Scheduler(
        lambda: [tagged, other], MemoryScheduleState, lambda s, t, txn: s.name, tags=["x"]
    )
    assert [e.job for e in sch.run_once(T0 + HOUR)] == ["a"]


def test_the_thread_starts_and_stops() -> None:
    done = threading.Event()

    def enqueue(_s: Schedule, _t: datetime, _txn: object = None) -> str:
        done.set()
        return "j"

    s = Schedule(name="s", worker="w", args={}, every=timedelta(seconds=1))
    sch = Scheduler(lambda: [s], MemoryScheduleState, enqueue, interval=0.2)
    sch.start()
    assert sch.running
    assert done.wait(5), "a tick within a few seconds"
    sch.stop()
    assert not sch.running


# -- the app -------------------------------------------------------------------------------------


def test_jobs_schedule_and_run_schedule_once() -> None:
    ran.clear()
    jobs = app()
    s = jobs.schedule(Report, {"day": "today"}, every=HOUR, name="r")
    assert s.tags == ("reports",) and jobs.schedules["r"] is s
    first = s.next_tick(s.since)
    (handle,) = jobs.run_schedule_once(at=first)
    assert handle.worker == "t.Report" and ran == ["today"]
    assert jobs.run_schedule_once(at=first) == []
    with pytest.raises(InvalidOptionError, match="timezone-aware"):
        jobs.run_schedule_once(at=datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, r"schedule 'bad': invalid cron expression '61 \* \* \* \*'"),
        ({"cron": "* * * * * *"}, "has 6 fields, not 5.*use every"),
        ({"cron": "* * * * *", "every": HOUR}, "either cron= or every="),
        ({}, "either cron= or every="),
        ({"every": timedelta(milliseconds=10)}, "at least one second"),
        ({"every": 60}, "takes a datetime.timedelta"),
        ({"cron": "* * * * *", "tz": "Mars/Base"}, "unknown time zone 'Mars/Base'"),
        ({"every": HOUR, "tz": "UTC"}, "tz= is for cron schedules"),
        ({"every": HOUR, "missed": "never"}, "missed= takes one of latest, all, skip"),
        ({"every": HOUR, "args": {"day": 3}}, "arguments do not validate against ReportArgs"),
    ],
)
def test_schedule_errors_name_the_schedule(kwargs: dict[str, object], message: str) -> None:
    jobs = app()
    args = kwargs.pop("args", {"day": "d"})
    with pytest.raises(InvalidOptionError, match=message):
        jobs.schedule(Report, args, name="bad", **kwargs)  # type: ignore[arg-type]


def test_unregistered_workers_and_duplicate_names() -> None:
    class Other(Worker[ReportArgs]):
        name = "t.Other"

        def perform(self, args: ReportArgs) -> None: ...

    jobs = app({"jobs": {"nightly": {"run": "t.Report", "schedule": "0 2 * * *", "args": {"day": "y"}}}})
    with pytest.raises(NotRegisteredError, match=r"t\.Other"):
        jobs.schedule(Other, {"day": "d"}, every=HOUR)
    jobs.schedule(Report, {"day": "d"}, every=HOUR, name="dup")
    with pytest.raises(InvalidOptionError, match="'dup' is already defined"):
        jobs.schedule(Report, {"day": "d"}, every=HOUR, name="dup")
    with pytest.raises(InvalidOptionError, match=r"already defined in the config \(scheduler.jobs.nightly\)"):
        jobs.schedule(Report, {"day": "d"}, every=HOUR, name="nightly")


# -- config --------------------------------------------------------------------------------------


def test_the_config_section_binds_to_registered_workers() -> None:
    jobs = app(
        {
            "missed": "all",
            "jobs": {
                "nightly_report": {
                    "run": "t.Report",
                    "schedule": "0 2 * * *",
                    "timezone": "Europe/Paris",
                    "args": {"day": "yesterday"},
                },
                "often": {"run": "t.Report", "every": 30, "args": {"day": "now"}, "tags": ["fast"]},
            },
        }
    )
    nightly, often = jobs.schedules["nightly_report"], jobs.schedules["often"]
    assert (nightly.cron, str(nightly.tz), nightly.args, nightly.source) == (
        "0 2 * * *",
        "Europe/Paris",
        {"day": "yesterday"},
        "config",
    )
    assert (often.every, often.tags, nightly.tags) == (timedelta(seconds=30), ("fast",), ("reports",))
    assert jobs.config.scheduler.missed == "all"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"run": "t.Report", "schedule": "0 25 * * *"}, "scheduler.jobs.x.schedule: invalid cron"),
        ({"run": "t.Report", "every": 5, "shedule": "x"}, "scheduler.jobs.x.shedule: unknown key; accepted"),
        ({"run": "t.Report"}, "scheduler.jobs.x: give either schedule"),
        ({"run": "t.Report", "every": 0.5}, "scheduler.jobs.x.every"),
        ({"run": "t.Report", "every": 5, "missed": "x"}, "scheduler.jobs.x.missed: got 'x'; accepted values"),
        ({"run": "t.Report", "schedule": "@daily", "timezone": "Nope/No"}, "unknown time zone 'Nope/No'"),
    ],
)
def test_config_errors_name_the_schedule_and_key(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({"scheduler": {"jobs": {"x": entry}}})


def test_an_unknown_worker_or_bad_args_fail_at_binding() -> None:
    jobs = app({"jobs": {"x": {"run": "t.Nope", "every": 60}}})
    with pytest.raises(ConfigError, match=r"scheduler.jobs.x.run: no registered worker named 't.Nope'"):
        jobs.run_schedule_once()
    jobs = app({"jobs": {"y": {"run": "t.Report", "every": 60, "args": {"dya": 1}}}})
    with pytest.raises(ConfigError, match=r"scheduler\.jobs\.y\.args: do not validate against ReportArgs"):
        _ = jobs.schedules


def test_background_async_runs_its_own_scheduler_thread_until_shutdown() -> None:
    jobs = app(mode="BackgroundAsync")
    jobs.schedule(Report, {"day": "background"}, every=timedelta(seconds=1), name="bg")
    thread = jobs._recurring._thread
    assert thread is not None and thread.running
    deadline = time.monotonic() + 5  # a new schedule's first run is its next tick: within 1 s
    while "background" not in ran and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "background" in ran, "the app's own scheduler thread enqueued no tick"
    jobs.shutdown()
    assert not thread.running


def test_the_schedules_command_lists_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from unified_jobs.cli import cli

    module = tmp_path / "sched_cli_app.py"
    module.write_text(
        "from tests.unit.test_scheduler import app, Report\n"
        "from datetime import timedelta\n"
        "nightly = {'run': 't.Report', 'schedule': '0 2 * * *', 'args': {'day': 'y'}}\n"
        "jobs = app({'jobs': {'nightly': nightly}})\n"
        "jobs.schedule(Report, {'day': 'd'}, every=timedelta(minutes=5), name='sweep')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("sched_cli_app", None)
    result = CliRunner().invoke(cli, ["--app", "sched_cli_app:jobs", "jobs", "schedules", "--json"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split('"name": "')[1].split('"')[0] for line in lines] == ["nightly", "sweep"]
    assert '"schedule": "0 2 * * * (UTC)"' in lines[0] and '"last_tick": null' in lines[0]
    table = CliRunner().invoke(cli, ["--app", "sched_cli_app:jobs", "jobs", "schedules"])
    assert table.exit_code == 0 and "every 5m" in table.output and "never" in table.output
