"""Django's ``@task`` functions through ``unified_jobs.django.TasksBackend`` in every mode and on
every queue kind, with real servers and a real worker (``manage.py unified_jobs worker``, or
``unified-jobs --app unified_jobs.django:get_jobs start --worker``).

Each kind runs ``tests/django/driver.py`` once, in a Django process of its own (Django's
settings are per process): it enqueues tasks (sync and async, with context, failing, deferred,
from a view through Django's test client inside ``atomic()``, and one in a block that rolls
back), waits until they end and reports; the tests below check that report. On the SQL kinds
the queue is the project's own database, so the view's job row is written in its transaction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    IN_CI,
    PG_HOST,
    PG_PORT,
    drop_rabbitmq_vhost,
    make_rabbitmq_vhost,
    require_rabbitmq,
    require_service,
)
from tests.procs import BIN, ROOT, PrivateRedis, WorkerProcess, read_records, stop_together

try:
    from unified_jobs.django import compat
except ImportError:  # pragma: no cover - the dev extra installs Django and the backport
    if IN_CI:
        raise
    pytest.skip("needs Django and django-tasks (pip install -e '.[dev]')", allow_module_level=True)

PG_DATABASE = "ujt_django"
SETTINGS = "tests.django.djproject.settings"
QUEUE_KINDS = ("sqlite", "postgres", "redis", "rabbitmq")
KINDS = ("inline", "inprocess", *QUEUE_KINDS)


def fresh_pg_database() -> dict[str, str]:
    """A new, empty Postgres database for the project (its tables and the queue's)."""
    import psycopg

    require_service("PostgreSQL", PG_HOST, PG_PORT)
    with psycopg.connect(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {PG_DATABASE}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": PG_DATABASE,
        "USER": "postgres",
        "HOST": PG_HOST,
        "PORT": str(PG_PORT),
    }


class Project:
    """The test project in one kind's config: its environment, its worker, its driver."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self.folder = folder
        self.records = folder / "records.jsonl"
        self._stop: list[Any] = []
        sqlite_db = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(folder / "project.sqlite3")}
        database, config = sqlite_db, self._config(kind, folder, sqlite_db)
        if kind == "postgres":
            database = fresh_pg_database()
        self.env = {
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            "UJ_DJANGO_DB": json.dumps(database),
            "UJ_DJANGO_CONFIG": json.dumps(config),
            "UJ_DJANGO_RECORDS": str(self.records),
            "PYTHONPATH": str(ROOT),
        }
        self.worker: WorkerProcess | None = None

    def _config(self, kind: str, folder: Path, sqlite_db: dict[str, str]) -> dict[str, Any]:
        workers: dict[str, Any] = {"mode": "BackgroundQueue", "concurrency": 2, "heartbeat_interval": 1}
        if kind == "inline":
            return {"workers": {"mode": "ForegroundBlocking"}}
        if kind == "inprocess":
            return {"workers": {"mode": "BackgroundAsync", "concurrency": 2}}
        if kind == "sqlite":  # the project's own database file
            return {"workers": workers, "queue": {"kind": "Sqlite", "uri": f"sqlite:///{sqlite_db['NAME']}"}}
        if kind == "postgres":  # the project's own database
            uri = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"
            return {"workers": workers, "queue": {"kind": "Postgres", "uri": uri, "poll_interval_sec": 0.5}}
        redis = PrivateRedis(folder)
        self._stop.append(redis.stop)
        if kind == "redis":
            return {"workers": workers, "queue": {"kind": "Redis", "uri": redis.url}}
        require_rabbitmq()
        vhost = make_rabbitmq_vhost("django")
        self._stop.append(lambda: drop_rabbitmq_vhost(vhost))
        return {"workers": workers, "queue": {"kind": "RabbitMQ", "uri": vhost, "store_uri": redis.url}}

    def start_worker(self) -> None:
        if self.kind == "redis":  # the command line's own way, beside manage.py's
            argv = [str(BIN / "unified-jobs"), "--app", "unified_jobs.django:get_jobs", "start", "--worker"]
        else:
            argv = [sys.executable, "-m", "django", "unified_jobs", "worker"]
        # Not waited for: the driver's jobs wait in the queue until it is up.
        self.worker = WorkerProcess(argv, self.env, self.folder / "worker.log")

    def drive(self) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "tests.django.driver"],
            env={**os.environ, **self.env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"the driver failed:\n{done.stdout}\n{done.stderr[-6000:]}"
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        report["records"] = read_records(self.records) if self.records.exists() else []
        return report

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        for stop in reversed(self._stop):
            stop()


@pytest.fixture(scope="module")
def projects() -> Iterator[list[Project]]:
    """The module's projects, stopped together at its end (a warm stop takes seconds)."""
    started: list[Project] = []
    yield started
    stop_together([p.worker for p in started if p.worker is not None])
    for project in started:
        project.close()


@pytest.fixture(scope="module", params=KINDS)
def report(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, projects: list[Project]
) -> dict[str, Any]:
    kind = request.param
    project = Project(kind, tmp_path_factory.mktemp(f"django-{kind}"))
    projects.append(project)
    if kind in QUEUE_KINDS:
        project.start_worker()
    report = project.drive()
    report["kind"] = kind
    if project.worker is not None:
        report["worker_log"] = project.worker.output()
        project.worker.terminate()  # its warm stop runs while the next kind's tests do
    return report


def test_tasks_return_their_values(report: dict[str, Any]) -> None:
    results = report["results"]
    assert results["add"] == {**results["add"], "status": "SUCCESSFUL", "value": 5, "attempts": 1}
    assert results["aenqueue"]["value"] == 8  # aenqueue, then aget_result
    assert report["aget_result"] == "SUCCESSFUL"
    assert results["async"]["value"] == 42  # an async def task
    assert results["context"]["value"] == 1  # takes_context: the attempt, from TaskContext
    # A queue only the backend's QUEUES names: the worker consumes it too.
    assert results["other_queue"] == {**results["other_queue"], "queue": "reports", "value": 20}
    assert all(r["finished"] for r in results.values()), results
    if report["kind"] in QUEUE_KINDS:
        log = report["worker_log"]
        assert "tests.django.orders.tasks.add" in log  # the worker ran them (by their own names)


def test_a_failing_task_reports_its_exception_class(report: dict[str, Any]) -> None:
    failed = report["results"]["fails"]
    assert failed["status"] == "FAILED"
    assert failed["errors"] == ["tests.django.orders.tasks.PaymentDeclined"]
    assert "value" not in failed  # return_value raises for a failed task


def test_a_view_enqueues_on_commit_and_a_rollback_leaves_no_job(report: dict[str, Any]) -> None:
    view = report["results"]["view"]
    assert view["status"] == "SUCCESSFUL"
    assert view["queue"] == "mail"  # the task's own queue_name, which the worker consumes
    assert view["value"]["sent"] is True
    assert report["rolled_back"] == "missing"  # get_result: TaskResultDoesNotExist
    # The committed order's task ran and saw its row; the rolled-back order and its job are gone.
    assert report["orders"] == [["pen", True]]
    assert [r["task"] for r in report["records"]].count("send_receipt") == 1
    # On the SQL kinds the queue is the project's database: the row is written in the very
    # transaction (Django's connection sees it before the commit); elsewhere it waits for it.
    assert report["row_in_transaction"] == {"sqlite": 1, "postgres": 1}.get(report["kind"])


def test_run_after_waits_where_the_backend_says_it_can(report: dict[str, Any]) -> None:
    flags = report["flags"]
    assert flags["defer"] is (report["kind"] != "inline")
    if flags["defer"]:
        assert report["later_waits"] == "READY"  # not run yet when enqueue returned
        assert report["results"]["later"]["status"] == "SUCCESSFUL"


def test_capability_flags_say_what_the_kind_does(report: dict[str, Any]) -> None:
    queue = report["kind"] in QUEUE_KINDS
    assert report["flags"] == {
        "defer": report["kind"] != "inline",
        "async": True,
        "get_result": queue,
        "priority": True,
    }
    assert report["mode"] == {"inline": "ForegroundBlocking", "inprocess": "BackgroundAsync"}.get(
        report["kind"], "BackgroundQueue"
    )
    assert report["api"] == compat.SOURCE


def test_arguments_must_survive_json(report: dict[str, Any]) -> None:
    errors = report["enqueue_errors"]
    assert "must be JSON-serializable" in errors["not_json"]
    assert "do not survive JSON unchanged" in errors["int_keys"]
    # Nothing was enqueued for them: add ran for (2, 3), (4, 4), (10, 10) and, deferred, (1, 1).
    values = sorted(r["value"] for r in report["records"] if r["task"] == "add")
    assert values == sorted([5, 8, 20] + ([2] if report["flags"]["defer"] else []))


def test_workers_in_an_apps_jobs_module_are_found(report: dict[str, Any]) -> None:
    assert report["restock"] == "completed"
    assert {"task": "restock", "item": "pen"} in report["records"]
