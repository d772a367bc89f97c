"""Recurring jobs with many schedulers and no leader, on every queue kind at once.

For each kind (Redis, Postgres, SQLite, RabbitMQ): three ``unified-jobs start --worker``
processes (each runs a scheduler thread) and two ``start --scheduler`` processes, all with a
schedule ticking every second, for one 20-second window shared by the four kinds. Midway, the
scheduler that enqueued the newest tick (the state's ``last_by``) is killed with SIGKILL.

Each tick must be enqueued exactly once (the schedulers' "enqueued tick T as job J" log lines,
and the state's record), every job must run, and the ticks must go on after the kill. A
scheduler killed between winning a tick and enqueueing it loses that tick (at most once, by
design): one missing tick next to the kill is allowed and reported.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    PG_HOST,
    PG_PORT,
    PG_URL,
    REDIS_HOST,
    REDIS_PORT,
    clear_sql_jobs,
    drop_rabbitmq_vhost,
    flush_redis_db,
    make_rabbitmq_vhost,
    redis_url,
    require_rabbitmq,
    require_service,
    sql_prefix,
)
from tests.procs import BIN, WorkerProcess, read_records, unified_jobs_worker, wait_until
from unified_jobs import Config, Jobs
from unified_jobs.scheduler import ScheduleState

pytestmark = pytest.mark.timeout(120)

APP = "tests.integration.scheduler_app:create_app"
SCHEDULE = "every_second"
WINDOW = 14.0
WORKERS = 3
SCHEDULERS = 2
WORKER_ARGS = (
    *("--pool", "solo", "--concurrency", "1"),
    *("--", "--prefetch-multiplier", "1", "--without-mingle", "--without-gossip", "--without-heartbeat"),
)
ENQUEUED = re.compile(r"schedule (\S+): enqueued tick (\S+) as job (\S+)")


def _scheduler_section() -> dict[str, Any]:
    # missed: all, so that every tick is enqueued even when every scheduler's pass came more than
    # a second late on a loaded machine (the default, latest, runs only the newest of those).
    return {"jobs": {SCHEDULE: {"run": "sched.Tick", "every": 1, "args": {"label": "tick"}, "missed": "all"}}}


def _configs(tmp: Path, vhost: str) -> dict[str, dict[str, Any]]:
    prefix = sql_prefix("scheduler")
    queues: dict[str, dict[str, Any]] = {
        # short redelivery windows: a job held by the killed process comes back within the test
        "redis": {"kind": "Redis", "uri": redis_url("scheduler"), "visibility_timeout": 5},
        "postgres": {"kind": "Postgres", "uri": PG_URL, "table_prefix": prefix, "lease_sec": 3},
        "sqlite": {
            "kind": "Sqlite",
            "uri": f"sqlite:///{tmp}/scheduler.db",
            "table_prefix": prefix,
            "lease_sec": 3,
        },
        "rabbitmq": {"kind": "RabbitMQ", "uri": vhost, "store_uri": redis_url("scheduler_rabbitmq")},
    }
    return {
        kind: {"workers": {"mode": "BackgroundQueue"}, "queue": queue, "scheduler": _scheduler_section()}
        for kind, queue in queues.items()
    }


@dataclass
class Fleet:
    """The processes of one kind."""

    kind: str
    config: dict[str, Any]
    record: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    schedulers: list[WorkerProcess] = field(default_factory=list)
    killed: WorkerProcess | None = None
    killed_at: float | None = None

    @property
    def processes(self) -> list[WorkerProcess]:
        return [*self.workers, *self.schedulers]

    def app(self) -> Jobs:
        from tests.integration.scheduler_app import Tick

        jobs = Jobs(Config.from_dict(self.config))
        jobs.register(Tick)
        return jobs


def _start(kind: str, config: dict[str, Any], tmp: Path) -> Fleet:
    record = tmp / f"{kind}-record.jsonl"
    record.write_text("")
    env = {"UJ_SCHED_CONFIG": json.dumps(config), "UJ_SCHED_RECORD": str(record)}
    fleet = Fleet(kind, config, record)
    for i in range(WORKERS):
        log, hostname = tmp / f"{kind}-worker{i}.log", f"{kind}{i}@%h"
        fleet.workers.append(unified_jobs_worker(APP, env, log, "--hostname", hostname, *WORKER_ARGS))
    for i in range(SCHEDULERS):
        argv = [str(BIN / "unified-jobs"), "--app", APP, "start", "--scheduler"]
        fleet.schedulers.append(WorkerProcess(argv, env, tmp / f"{kind}-scheduler{i}.log"))
    return fleet


def _enqueued(fleet: Fleet) -> dict[datetime, set[str]]:
    """Tick -> the jobs enqueued for it, from every scheduler's log."""
    found: dict[datetime, set[str]] = {}
    for proc in fleet.processes:
        for name, tick, job in ENQUEUED.findall(proc.output()):
            if name == SCHEDULE:
                found.setdefault(datetime.fromisoformat(tick), set()).add(job)
    return found


def _seconds(at: float) -> datetime:
    return datetime.fromtimestamp(int(at), timezone.utc)


@pytest.fixture
def kinds(tmp_path: Path) -> Iterator[dict[str, dict[str, Any]]]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    require_rabbitmq()
    vhost = make_rabbitmq_vhost("scheduler")
    configs = _configs(tmp_path, vhost)
    flush_redis_db("scheduler")
    flush_redis_db("scheduler_rabbitmq")
    clear_sql_jobs(PG_URL, sql_prefix("scheduler"))
    clear_sql_jobs(configs["sqlite"]["queue"]["uri"], sql_prefix("scheduler"))
    try:
        yield configs
    finally:
        drop_rabbitmq_vhost(vhost)


def test_every_tick_is_enqueued_once_by_many_schedulers_and_survives_a_kill(
    kinds: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    fleets = {kind: _start(kind, config, tmp_path) for kind, config in kinds.items()}
    try:
        for fleet in fleets.values():
            for proc in fleet.workers:
                proc.wait_for_output("ready.", timeout=60)
            for proc in fleet.schedulers:
                proc.wait_for_output("scheduler ready", timeout=60)
        started = time.time()
        apps = {kind: fleet.app() for kind, fleet in fleets.items()}

        # Midway: kill the scheduler that enqueued the newest tick, right after it did (every
        # kind at once, each at its next tick: one after the other left the last kind too few
        # ticks after its kill on a loaded machine).
        time.sleep(WINDOW / 2 - 2)

        def kill_next_winner(kind: str) -> None:
            fleet = fleets[kind]
            last_by = _next_winner(apps[kind].adapter.schedule_state())
            pid = int(last_by.rsplit(":", 1)[1])
            (victim,) = [p for p in fleet.processes if p.proc.pid == pid]
            # Not within the milliseconds after its publish: a victim that is also a worker may
            # be taking that very job, and kombu's Redis transport loses a message whose worker
            # dies between its BRPOP and its unacked record (a gap of the transport, see
            # docs/explanation/guarantees.md; not what this test is about).
            time.sleep(0.3)
            victim.kill()
            fleet.killed, fleet.killed_at = victim, time.time()

        with ThreadPoolExecutor(len(fleets)) as pool:
            for future in [pool.submit(kill_next_winner, kind) for kind in fleets]:
                future.result()
        time.sleep(started + WINDOW - time.time())
        stopped = time.time()

        # Every job enqueued up to now runs (a job held by the killed worker comes back).
        def all_ran() -> bool:
            for fleet in fleets.values():
                ran = {r["job"] for r in read_records(fleet.record)}
                due = {j for t, jobs in _enqueued(fleet).items() if t < _seconds(stopped) for j in jobs}
                if not due <= ran:
                    return False
            return True

        wait_until(all_ran, 15, 0.1)
    finally:
        for fleet in fleets.values():
            for proc in fleet.processes:
                if proc.proc.poll() is None:
                    proc.proc.terminate()
        for fleet in fleets.values():
            for proc in fleet.processes:
                if proc is not fleet.killed:
                    proc.stop(10)

    report: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for kind, fleet in fleets.items():
        enqueued = _enqueued(fleet)
        ran = {r["job"] for r in read_records(fleet.record)}
        # The window: from the first whole second after all were up to the last before the end
        # (the edges may be half in, half out).
        first, last = _seconds(started) + timedelta(seconds=1), _seconds(stopped) - timedelta(seconds=1)
        expected = [first + timedelta(seconds=i) for i in range(int((last - first).total_seconds()) + 1)]
        duplicates = sorted(t for t, jobs in enqueued.items() if len(jobs) > 1)
        missing = [t for t in expected if t not in enqueued]
        not_run = sorted(j for t in expected for j in enqueued.get(t, ()) if j not in ran)
        assert fleet.killed_at is not None
        near_kill = [t for t in missing if abs(t.timestamp() - fleet.killed_at) <= 2]
        after_kill = [t for t in expected if t.timestamp() > fleet.killed_at + 1 and t in enqueued]
        report[kind] = {
            "expected": len(expected),
            "enqueued": sum(1 for t in expected if t in enqueued),
            "duplicates": len(duplicates),
            "missing": len(missing),
            "missing_next_to_the_kill": len(near_kill),
            "not_run": len(not_run),
            "killed": "worker" if fleet.killed in fleet.workers else "scheduler",
            "ticks_after_the_kill": len(after_kill),
            "winners": len({p for p in fleet.processes if _won_any(p)}),
        }
        if duplicates:
            problems.append(f"{kind}: ticks enqueued more than once: {[t.isoformat() for t in duplicates]}")
        # On the SQL kinds a tick and its job are one transaction: none may be missing. On Redis
        # and RabbitMQ a scheduler killed between winning a tick and enqueueing it loses it (the
        # kill comes after the winner enqueued, so that window is rarely hit; one is allowed).
        lossless = kind in ("postgres", "sqlite")
        if len(missing) > len(near_kill) or len(near_kill) > (0 if lossless else 1):
            problems.append(f"{kind}: ticks never enqueued: {[t.isoformat() for t in missing]}")
        if not_run:
            problems.append(f"{kind}: jobs enqueued but never run: {not_run}")
        if len(after_kill) < 3:
            problems.append(f"{kind}: the ticks did not go on after the kill ({len(after_kill)} after it)")
        # The state agrees with the logs: its last tick was enqueued, by whom it says.
        record = fleet.app().adapter.schedule_state().get([SCHEDULE])[SCHEDULE]
        assert record.last_tick is not None
        if record.last_job_id is not None and record.last_job_id not in enqueued.get(record.last_tick, set()):
            problems.append(f"{kind}: the state's last job {record.last_job_id} is in no log")
    print("\nscheduler report:", json.dumps(report, indent=1))
    assert not problems, "\n".join(problems) + "\n" + json.dumps(report, indent=1)


def _next_winner(state: ScheduleState) -> str:
    """``last_by`` of the next tick, as soon as its job is enqueued (and recorded)."""
    before = state.get([SCHEDULE])[SCHEDULE].last_tick

    def enqueued() -> bool:
        record = state.get([SCHEDULE])[SCHEDULE]
        return record.last_tick != before and record.last_job_id is not None

    assert wait_until(enqueued, 3, 0.01)
    last_by = state.get([SCHEDULE])[SCHEDULE].last_by
    assert last_by is not None
    return last_by


def _won_any(proc: WorkerProcess) -> bool:
    return any(name == SCHEDULE for name, _, _ in ENQUEUED.findall(proc.output()))
