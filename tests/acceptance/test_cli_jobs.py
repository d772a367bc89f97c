"""``unified-jobs jobs ...``, run as a user runs it: the real command in subprocesses, from a project
folder holding a small app, against real Postgres, SQLite files and Redis; jobs are enqueued by the
app and run by real ``unified-jobs start --worker`` processes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from tests.conftest import (
    PG_HOST,
    PG_PORT,
    PG_URL,
    REDIS_HOST,
    REDIS_PORT,
    clear_sql_jobs,
    flush_redis_db,
    redis_url,
    require_service,
    sql_prefix,
)
from tests.procs import BIN, ROOT, WorkerProcess, read_records, unified_jobs_worker, wait_until
from unified_jobs.adapters.sql import job_counts
from unified_jobs.adapters.sql.engine import get_engine
from unified_jobs.adapters.sql.schema import tables_for

PREFIX = sql_prefix("jobscli")
REPORT = "jobs_app.ReportWorker"
MAIL = "jobs_app.MailWorker"

APP = """
    import json
    import os
    from pathlib import Path

    from pydantic import BaseModel

    from unified_jobs import Jobs, Worker


    class Args(BaseModel):
        n: int
        note: str = ""


    jobs = Jobs.from_config(config_dir=Path(__file__).parent / "config")


    def record(worker: Worker[Args], args: Args) -> None:
        line = {"worker": worker.name, "n": args.n, "note": args.note, "id": worker.job_id}
        with open(os.environ["JOBS_OUT"], "a") as out:
            out.write(json.dumps(line) + "\\n")


    @jobs.register
    class ReportWorker(Worker[Args]):
        queue = "reports"
        tags = ("reports", "daily")

        def perform(self, args: Args) -> None:
            if args.n < 0:
                raise ValueError(f"n is negative: {args.n}")
            record(self, args)


    @jobs.register
    class MailWorker(Worker[Args]):
        queue = "mail"

        def perform(self, args: Args) -> None:
            record(self, args)
"""

# Enqueues the jobs given as JSON: [{"worker": name, "args": {...}, "wait": s, "priority": p, "queue": q}].
ENQUEUE = """
    import json
    import sys
    from datetime import timedelta

    from jobs_app import jobs

    for spec in json.loads(sys.argv[1]):
        options = {k: spec[k] for k in ("priority", "queue") if k in spec}
        if "wait" in spec:
            options["wait"] = timedelta(seconds=spec["wait"])
        jobs.worker(spec["worker"]).perform_later(spec["args"], **options)
"""


@dataclass
class Project:
    """A user's project folder with ``jobs_app.py`` on a queue; runs commands in it."""

    path: Path
    kind: str
    uri: str

    @property
    def env(self) -> dict[str, str]:
        user_env = {
            k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("UNIFIED_JOBS_")
        }
        return {**user_env, "JOBS_OUT": str(self.path / "ran.jsonl"), "COLUMNS": "200"}

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``unified-jobs --app jobs_app:jobs ARGS`` in the project folder."""
        argv = [str(BIN / "unified-jobs"), "--app", "jobs_app:jobs", *args]
        return subprocess.run(
            argv, cwd=self.path, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=60
        )

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = self.run(*args, env=env)
        assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def counts(self) -> dict[str, Any]:
        """``jobs list --format json``."""
        data: dict[str, Any] = json.loads(self.ok("jobs", "list", "--format", "json"))
        return data

    def enqueue(self, *specs: dict[str, Any]) -> None:
        subprocess.run(
            [sys.executable, "enqueue.py", json.dumps(specs)],
            cwd=self.path,
            env=self.env,
            check=True,
            timeout=60,
        )

    def worker(self, *queues: str) -> WorkerProcess:
        args = [a for q in queues for a in ("--queue", q)]
        env = {**self.env, "PYTHONPATH": f"{self.path}{os.pathsep}{ROOT}"}
        log = self.path / "worker.log"
        return unified_jobs_worker("jobs_app:jobs", env, log, *args, "-c", "2", "--pool", "threads")

    def ran(self) -> list[dict[str, Any]]:
        return read_records(self.path / "ran.jsonl")


def write_project(path: Path, queue_yaml: str) -> None:
    (path / "jobs_app.py").write_text(textwrap.dedent(APP))
    (path / "enqueue.py").write_text(textwrap.dedent(ENQUEUE))
    (path / "config").mkdir()
    config = "workers:\n  mode: BackgroundQueue\nqueue:\n" + textwrap.indent(
        textwrap.dedent(queue_yaml), "  "
    )
    (path / "config" / "development.yaml").write_text(config)


@pytest.fixture(params=[pytest.param("Postgres", marks=pytest.mark.postgres), "Sqlite"])
def sql_project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    kind = request.param
    if kind == "Postgres":
        require_service("PostgreSQL", PG_HOST, PG_PORT)
        uri = PG_URL
    else:
        uri = f"sqlite:///{tmp_path / 'jobs.db'}"
    clear_sql_jobs(uri, PREFIX)
    write_project(
        tmp_path,
        f"""\
        kind: {kind}
        uri: '{uri}'
        table_prefix: {PREFIX}
        lease_sec: 2
        poll_interval_sec: 0.2
        """,
    )
    yield Project(tmp_path, kind, uri)
    if kind == "Postgres":
        clear_sql_jobs(uri, PREFIX)


def run_worker_until(project: Project, queues: tuple[str, ...], done: Any, what: str) -> None:
    """Start a worker on ``queues``, wait until ``done()``, stop it (warm shutdown)."""
    worker = project.worker(*queues)
    try:
        assert wait_until(done, 40), f"timed out waiting for {what}:\n{worker.output()[-3000:]}"
    finally:
        worker.stop()


def set_status(p: Project, positions: list[int], **values: Any) -> None:
    """Update the jobs enqueued at these positions (0 = the first), as a worker would have."""
    jobs = tables_for(PREFIX).jobs
    with get_engine(p.uri).begin() as conn:
        ids = conn.execute(select(jobs.c.id).order_by(jobs.c.id)).scalars().all()
        now = datetime.now(timezone.utc)
        conn.execute(
            update(jobs).where(jobs.c.id.in_([ids[i] for i in positions])).values(updated_at=now, **values)
        )


def body_of(payload: dict[str, Any]) -> Any:
    """The (args, kwargs, embed) of a Celery protocol-2 message."""
    return json.loads(base64.b64decode(payload["body"]))


def test_list_cancel_retry_purge_tidy_change_what_list_reports(sql_project: Project) -> None:
    p = sql_project
    p.enqueue(
        {"worker": REPORT, "args": {"n": 1}},
        {"worker": REPORT, "args": {"n": 2}},
        {"worker": REPORT, "args": {"n": -1}},  # fails
        {"worker": REPORT, "args": {"n": 3}, "wait": 3600},
        {"worker": REPORT, "args": {"n": 4}, "wait": 3600},
        {"worker": MAIL, "args": {"n": 10}},
        {"worker": MAIL, "args": {"n": 11}},
    )

    # As a worker leaves them (the worker runs jobs in the dump/import test): 2 done, 1 failed.
    set_status(p, [0, 1], status="completed")
    set_status(p, [2], status="failed", attempts=1, last_error="ValueError: n is negative: -1")
    data = p.counts()
    assert data["kind"] == p.kind
    assert data["counts"] == {
        "mail": {"queued": 2},
        "reports": {"completed": 2, "failed": 1, "queued": 2},
    }
    assert data["delayed"] == {"reports": 2}

    table = p.ok("jobs", "list")
    assert f"Jobs in the {p.kind} queue at" in table
    header = next(line for line in table.splitlines() if "queue" in line and "delayed" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == [
        "queue", "queued", "delayed", "processing", "completed", "failed", "cancelled", "total",
    ]  # fmt: skip
    row = next(line for line in table.splitlines() if "reports" in line)
    assert [c.strip() for c in row.strip("│ ").split("│")] == ["reports", "2", "2", "0", "2", "1", "0", "5"]

    listed = json.loads(p.ok("jobs", "list", "--jobs", "--status", "failed", "--format", "json"))
    (failed,) = listed["jobs"]
    assert (failed["worker"], failed["queue"], failed["status"]) == (REPORT, "reports", "failed")
    assert "n is negative: -1" in failed["last_error"]
    assert failed["attempts"] == 1
    by_worker = json.loads(p.ok("jobs", "list", "--worker", MAIL, "--format", "json"))
    assert by_worker["counts"] == {"mail": {"queued": 2}}

    # The worker's name from an environment variable: options of `jobs` subcommands read them too.
    out = p.ok("jobs", "cancel", env={"UNIFIED_JOBS_JOBS_CANCEL_NAME": MAIL})
    assert out.strip() == f"cancelled 2 jobs of {MAIL}"
    assert p.counts()["counts"]["mail"] == {"cancelled": 2}

    assert p.ok("jobs", "retry", "--name", REPORT).strip() == f"requeued 1 failed job of {REPORT}"
    assert job_counts(p.uri, PREFIX)["reports"] == {"completed": 2, "queued": 3}

    # The default --max-age is 90 days: these jobs are too recent.
    assert "deleted 0 jobs" in p.ok("jobs", "purge")
    dump_dir = p.path / "purged"
    out = p.ok("jobs", "purge", "--max-age", "0", "--status", "completed", "--dump", str(dump_dir))
    assert "deleted 2 jobs (completed)" in out
    (dump_file,) = dump_dir.glob("unified-jobs-dump-*.jsonl")
    assert f"dumped 2 jobs to {dump_file}" in out
    dumped = [json.loads(line) for line in dump_file.read_text().splitlines()]
    assert sorted(body_of(d["payload"])[1]["n"] for d in dumped) == [1, 2]
    assert {(d["status"], d["worker"], d["queue"]) for d in dumped} == {("completed", REPORT, "reports")}
    assert job_counts(p.uri, PREFIX) == {"mail": {"cancelled": 2}, "reports": {"queued": 3}}

    assert p.ok("jobs", "tidy").strip() == "deleted 2 jobs (completed and cancelled)"
    data = p.counts()
    assert data["counts"] == {"reports": {"queued": 3}}
    assert data["delayed"] == {"reports": 2}


def test_requeue_puts_stuck_processing_jobs_back(sql_project: Project) -> None:
    p = sql_project
    jobs = tables_for(PREFIX).jobs
    now = datetime.now(timezone.utc)
    ago = lambda minutes: now - timedelta(minutes=minutes)  # noqa: E731
    base = {"queue": "reports", "task_name": REPORT, "payload": "{}", "priority": 0, "run_at": ago(60)}
    rows = {
        # claimed 30 min ago, its worker died: stuck
        "stuck": {"status": "processing", "updated_at": ago(30), "lease_expires_at": ago(29)},
        # claimed 30 min ago, its worker still renews the lease: running, not stuck
        "running": {
            "status": "processing",
            "updated_at": ago(30),
            "lease_expires_at": now + timedelta(hours=1),
        },
        # claimed 1 min ago, lease expired: younger than --from-age
        "recent": {"status": "processing", "updated_at": ago(1), "lease_expires_at": ago(0.5)},
        "queued": {"status": "queued", "updated_at": ago(30), "lease_expires_at": None},
    }
    with get_engine(p.uri).begin() as conn:
        for task_id, values in rows.items():
            owner = None if values["status"] == "queued" else "deadhost:42:abc"
            conn.execute(
                insert(jobs).values(
                    **base, **values, task_id=task_id, created_at=ago(60), attempts=1, lease_owner=owner
                )
            )
    assert p.counts()["counts"] == {"reports": {"processing": 3, "queued": 1}}

    out = p.ok("jobs", "requeue", "--from-age", "10")
    assert out.strip() == "requeued 1 job stuck in processing for 10 min or more"
    listed = json.loads(p.ok("jobs", "list", "--jobs", "--format", "json"))
    status = {j["task_id"]: j["status"] for j in listed["jobs"]}
    assert status == {"stuck": "queued", "running": "processing", "recent": "processing", "queued": "queued"}
    stuck = next(j for j in listed["jobs"] if j["task_id"] == "stuck")
    assert "deadhost:42:abc" in stuck["last_error"]

    # Without --from-age, every processing job whose lease is gone.
    assert "requeued 1 job" in p.ok("jobs", "requeue")
    assert p.counts()["counts"] == {"reports": {"processing": 1, "queued": 3}}


def test_dump_then_import_loses_no_field_and_the_jobs_run(sql_project: Project) -> None:
    p = sql_project
    p.enqueue(
        {"worker": REPORT, "args": {"n": 1, "note": "ünïcode"}, "priority": 7},
        {"worker": REPORT, "args": {"n": 2}, "queue": "urgent", "priority": 9},
        {"worker": MAIL, "args": {"n": 3}, "wait": 3600, "priority": 2},
        {"worker": MAIL, "args": {"n": 4, "note": "was failed"}},
    )
    # One is made failed: import re-enqueues it as queued, with a fresh attempts count.
    with get_engine(p.uri).begin() as conn:
        jobs = tables_for(PREFIX).jobs
        conn.execute(
            update(jobs)
            .where(jobs.c.payload.contains("was failed"))
            .values(status="failed", attempts=1, last_error="boom")
        )

    first_dir, second_dir = p.path / "dump1", p.path / "dump2"
    assert "dumped 4 jobs to " in p.ok("jobs", "dump", "--folder", str(first_dir))
    (first_file,) = first_dir.glob("unified-jobs-dump-*.jsonl")
    before = {r["task_id"]: r for r in map(json.loads, first_file.read_text(encoding="utf-8").splitlines())}
    assert len(before) == 4
    assert {r["format"] for r in before.values()} == {"unified_jobs.job/1"}
    report = next(r for r in before.values() if body_of(r["payload"])[1]["n"] == 1)
    assert report["tags"] == ["reports", "daily"]
    assert report["payload"]["headers"]["unified_jobs_tags"] == ["reports", "daily"]
    failed = next(r for r in before.values() if r["status"] == "failed")
    assert (failed["attempts"], failed["last_error"]) == (1, "boom")

    # Empty the table, then bring the jobs back.
    assert "deleted 4 jobs" in p.ok("jobs", "purge", "--max-age", "0", "--status", "queued,failed")
    assert job_counts(p.uri, PREFIX) == {}
    out = p.ok("jobs", "import", "--file", str(first_file))
    assert out.strip() == f"imported 4 jobs from {first_file} as queued"
    assert p.counts()["counts"] == {"mail": {"queued": 2}, "reports": {"queued": 1}, "urgent": {"queued": 1}}

    p.ok("jobs", "dump", "-f", str(second_dir))
    (second_file,) = second_dir.glob("unified-jobs-dump-*.jsonl")
    after = {r["task_id"]: r for r in map(json.loads, second_file.read_text(encoding="utf-8").splitlines())}
    assert after.keys() == before.keys()  # the same Celery task ids
    delayed_id = next(k for k, r in before.items() if body_of(r["payload"])[1]["n"] == 3)
    for task_id, old in before.items():
        new = after[task_id]
        for key in ("worker", "queue", "priority", "tags", "created_at"):
            assert new[key] == old[key], (key, old, new)
        assert body_of(new["payload"]) == body_of(old["payload"])
        assert new["payload"]["headers"]["task"] == old["worker"]
        assert (new["status"], new["attempts"], new["last_error"]) == ("queued", 0, None)
        if task_id == delayed_id:
            assert new["run_at"] == old["run_at"]  # still ahead: kept
            assert new["payload"] == old["payload"]
    assert {r["queue"]: r["priority"] for r in after.values() if r["worker"] == REPORT} == {
        "reports": 7,
        "urgent": 9,
    }

    # The imported jobs really run.
    def three_ran() -> bool:
        return len(p.ran()) >= 3

    run_worker_until(p, ("reports", "urgent", "mail"), three_ran, "the 3 due imported jobs to run")
    ran = {(r["worker"], r["n"], r["note"], r["id"]) for r in p.ran()}
    by_n = {body_of(r["payload"])[1]["n"]: task_id for task_id, r in before.items()}
    assert ran == {
        (REPORT, 1, "ünïcode", by_n[1]),
        (REPORT, 2, "", by_n[2]),
        (MAIL, 4, "was failed", by_n[4]),
    }
    counts = p.counts()
    assert counts["counts"] == {
        "mail": {"completed": 1, "queued": 1},
        "reports": {"completed": 1},
        "urgent": {"completed": 1},
    }
    assert counts["delayed"] == {"mail": 1}


def test_import_refuses_a_bad_file_and_imports_nothing(sql_project: Project) -> None:
    p = sql_project
    bad = p.path / "bad.jsonl"
    body = base64.b64encode(json.dumps([[], {"n": 1}, {}]).encode()).decode()
    good = {
        "format": "unified_jobs.job/1",
        "queue": "reports",
        "worker": REPORT,
        "payload": {"body": body, "properties": {"body_encoding": "base64"}},
    }
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "priority": "high"}) + "\n")
    result = p.run("jobs", "import", "-f", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: cannot import {bad}: line 2: priority must be an integer, not 'high'; nothing was imported"
    )
    assert p.counts()["counts"] == {}


@pytest.mark.redis
def test_redis_list_shows_queue_lengths_and_other_commands_need_a_job_table(tmp_path: Path) -> None:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    flush_redis_db("jobscli")
    write_project(tmp_path, f"kind: Redis\nuri: '{redis_url('jobscli')}'\n")
    p = Project(tmp_path, "Redis", redis_url("jobscli"))
    # Priorities 0, 5 and 9 land in different kombu sub-lists of the "reports" queue.
    p.enqueue(
        {"worker": REPORT, "args": {"n": 1}},
        {"worker": REPORT, "args": {"n": 2}, "priority": 5},
        {"worker": REPORT, "args": {"n": 3}, "priority": 9},
        {"worker": MAIL, "args": {"n": 4}},
    )
    data = p.counts()
    assert data == {
        "kind": "Redis",
        "counts": {
            "default": {"queued": 0, "reserved": 0},
            "reports": {"queued": 3, "reserved": 0},
            "mail": {"queued": 1, "reserved": 0},
        },
    }
    table = p.ok("jobs", "list")
    assert f"Queues in the Redis queue at {redis_url('jobscli')}" in table
    row = next(line for line in table.splitlines() if "reports" in line)
    assert [c.strip() for c in row.strip("│ ").split("│")] == ["reports", "3", "0"]

    for args in (("tidy",), ("cancel", "--name", MAIL), ("dump",), ("list", "--status", "failed")):
        result = p.run("jobs", *args)
        assert result.returncode == 1, args
        assert "job table" in result.stderr and "a Postgres or Sqlite queue" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    result = p.run("jobs", "tidy")
    assert result.stderr.startswith("error: `jobs tidy` needs a job table: a Postgres or Sqlite queue")
    flush_redis_db("jobscli")


@pytest.mark.redis
def test_redis_failed_jobs_are_shown_and_retried_all_at_once(tmp_path: Path) -> None:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    flush_redis_db("jobscli")
    write_project(tmp_path, f"kind: Redis\nuri: '{redis_url('jobscli')}'\n")
    p = Project(tmp_path, "Redis", redis_url("jobscli"))
    p.enqueue({"worker": REPORT, "args": {"n": -1}}, {"worker": REPORT, "args": {"n": -2}})

    def failed() -> list[dict[str, Any]]:
        return [json.loads(line) for line in p.ok("jobs", "failed", "--json").splitlines()]

    run_worker_until(p, ("reports",), lambda: len(failed()) == 2, "both jobs to fail")
    ids = {job["id"] for job in failed()}
    assert p.ok("jobs", "retry", "--all-failed").strip() == "requeued 2 failed jobs"
    assert failed() == []
    assert {json.loads(p.ok("jobs", "show", i, "--json"))["status"] for i in ids} == {"queued"}
    assert p.counts()["counts"]["reports"] == {"queued": 2, "reserved": 0}
    flush_redis_db("jobscli")


def test_outside_background_queue_mode_the_jobs_commands_say_why(tmp_path: Path) -> None:
    (tmp_path / "jobs_app.py").write_text(textwrap.dedent(APP))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "development.yaml").write_text("workers:\n  mode: BackgroundAsync\n")
    p = Project(tmp_path, "none", "")
    for command in ("list", "tidy"):
        result = p.run("jobs", command)
        assert result.returncode == 1
        assert result.stderr.startswith(
            f"error: `jobs {command}` manages a queue, but the app runs in mode BackgroundAsync"
        ), result.stderr
        assert "Set workers.mode: BackgroundQueue" in result.stderr


def test_show_cancel_failed_retry_and_discard_one_job_by_id(sql_project: Project) -> None:
    p = sql_project
    p.enqueue({"worker": REPORT, "args": {"n": 1}, "wait": 600}, {"worker": REPORT, "args": {"n": -1}})
    listed = json.loads(p.ok("jobs", "list", "--jobs", "--format", "json"))["jobs"]  # newest first
    bad, waiting = (row["task_id"] for row in listed)
    shown = json.loads(p.ok("jobs", "show", waiting, "--json"))
    assert (shown["status"], shown["worker"], shown["args"]) == ("scheduled", REPORT, {"n": 1, "note": ""})
    assert p.ok("jobs", "cancel", waiting).strip() == f"cancelled job {waiting}"
    assert json.loads(p.ok("jobs", "show", waiting, "--json"))["status"] == "cancelled"
    assert p.run("jobs", "cancel", waiting).returncode == 1  # not waiting any more

    def bad_failed() -> bool:
        return bool(json.loads(p.ok("jobs", "show", bad, "--json"))["status"] == "failed")

    run_worker_until(p, ("reports",), bad_failed, "the failing job to fail")
    (failed,) = [json.loads(line) for line in p.ok("jobs", "failed", "--json").splitlines()]
    assert failed["id"] == bad and failed["last_error"].startswith("ValueError: n is negative: -1")
    assert "Traceback" in failed["traceback"]
    assert "1 failed job" in p.ok("jobs", "failed", "--worker", REPORT)
    assert p.ok("jobs", "retry", bad).strip() == f"enqueued job {bad} again"
    assert json.loads(p.ok("jobs", "show", bad, "--json"))["status"] == "queued"
    p.ok("jobs", "cancel", bad)
    assert p.ok("jobs", "discard", bad).strip() == f"discarded job {bad}"
    assert p.run("jobs", "show", bad).returncode == 1
    assert p.run("jobs", "discard", waiting + "-nope").returncode == 1
