"""``jobs import`` checks every job of a dump against the app before importing any (SQLite file,
in this process): a crafted dump cannot make a worker run Celery's own tasks, land jobs in a
queue no worker reads, or carry priorities and times the app never makes."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.unit.cli_project import Project
from unified_jobs.adapters.sql import job_counts

PREFIX = "ujt_unit_import_"
REPORT = "shop.ReportWorker"
CLEANUP = "celery.backend_cleanup"  # Celery's built-in task, which deletes expired results

# An adopted Celery app with a task of its own: importing its jobs is fine.
LEGACY = """
    from celery import Celery

    legacy = Celery("legacy")


    @legacy.task(name="legacy.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y
"""


def record(worker: str = REPORT, kwargs: Any = None, args: Any = (), **top: Any) -> dict[str, Any]:
    """A dump line as `jobs dump` writes it (Celery protocol 2, JSON, base64 body)."""
    task_id = str(uuid.uuid4())
    body = [list(args), {"n": 1} if kwargs is None else kwargs, {"callbacks": None, "errbacks": None}]
    queue = top.get("queue", "reports")
    return {
        "format": "unified_jobs.job/1",
        "task_id": task_id,
        "worker": worker,
        "queue": queue,
        "priority": 0,
        "run_at": "2026-01-02T03:04:05+00:00",
        "created_at": "2026-01-02T03:04:05+00:00",
        "tags": [],
        "payload": {
            "body": base64.b64encode(json.dumps(body).encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"task": worker, "id": task_id, "eta": None},
            "properties": {
                "correlation_id": task_id,
                "body_encoding": "base64",
                "priority": 0,
                "delivery_info": {"exchange": "", "routing_key": queue},
            },
        },
        **top,
    }


def write_dump(path: Path, *records: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def sqlite_project(project: Project) -> Project:
    project.write(
        f"kind: Sqlite\nuri: 'sqlite:///{project.path / 'jobs.db'}'\ntable_prefix: {PREFIX}\n",
        prelude=LEGACY,
        celery="legacy",
    )
    return project


def uri(p: Project) -> str:
    return f"sqlite:///{p.path / 'jobs.db'}"


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        # A crafted dump made the worker run Celery's built-in cleanup task.
        (record(CLEANUP, kwargs={}), f"worker {CLEANUP!r} is one of Celery's own tasks, which are never"),
        (record("shop.Nope"), "worker 'shop.Nope' is not a worker registered with this app or a task of its"),
        # It was cut to 255 characters: the jobs then sat in a queue no worker reads.
        (record(queue="q" * 300), "queue is 300 characters long, longer than the 255 the jobs table holds"),
        (record(queue=""), "queue must be a non-empty string, not ''"),
        (record(priority=-1000), "priority -1000 is out of range: 0 to 9 (higher runs first), or null"),
        (record(run_at="0001-01-01T00:00:00+00:00"), "run_at '0001-01-01T00:00:00+00:00' is out of range"),
        (record(run_at="tomorrow"), "run_at 'tomorrow' is not an ISO 8601 time"),
        (record(kwargs={"n": "x"}), f"the arguments of {REPORT} do not validate: n: Input should be"),
        (record(kwargs={}), f"the arguments of {REPORT} do not validate: n: Field required"),
        (record(args=[1]), f"{REPORT} takes keyword arguments only, not the positional [1]"),
    ],
)  # fmt: skip
def test_a_bad_job_is_refused_by_line_and_nothing_is_imported(
    sqlite_project: Project, bad: dict[str, Any], problem: str
) -> None:
    p = sqlite_project
    dump = write_dump(p.path / "dump.jsonl", record(), record(kwargs={"n": 2}), bad)
    for args in ((), ("--dry-run",)):
        result = p.run("jobs", "import", "--file", str(dump), *args)
        assert result.code == 1, result
        assert result.err.startswith(f"error: cannot import {dump}: line 3: {problem}"), result.err
        assert result.err.rstrip().endswith("imported"), result.err  # "nothing was/would be imported"
        assert len(result.err.splitlines()) == 1
    assert job_counts(uri(p), PREFIX) == {}


def test_dry_run_checks_and_counts_and_imports_nothing_then_the_import_does(sqlite_project: Project) -> None:
    p = sqlite_project
    dump = write_dump(
        p.path / "dump.jsonl",
        record(),
        record(kwargs={"n": 2, "note": "x"}, priority=None),  # null: the default priority
        record(queue="urgent", priority=9),
        record("legacy.add", kwargs={"x": 1, "y": 2}, queue="celery"),  # a task of the adopted app
    )
    result = p.run("jobs", "import", "--file", str(dump), "--dry-run")
    assert result.code == 0, result
    assert result.out.splitlines() == [
        f"{dump} is fine: 4 jobs would be imported as queued",
        "        1  legacy.add  (queue celery)",
        f"        2  {REPORT}  (queue reports)",
        f"        1  {REPORT}  (queue urgent)",
        "dry run: nothing was imported",
    ]
    assert job_counts(uri(p), PREFIX) == {}

    result = p.run("jobs", "import", "--file", str(dump))
    assert result.code == 0, result
    assert result.out.strip() == f"imported 4 jobs from {dump} as queued"
    assert job_counts(uri(p), PREFIX) == {
        "celery": {"queued": 1},
        "reports": {"queued": 2},
        "urgent": {"queued": 1},
    }
