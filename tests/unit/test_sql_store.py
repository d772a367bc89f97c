"""The SQL job store of the ``jobs`` commands, and the engine cache, on SQLite files."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text

from unified_jobs.adapters.sql.engine import get_engine
from unified_jobs.adapters.sql.schema import tables_for
from unified_jobs.adapters.sql.store import PAGE_SIZE, JobStore
from unified_jobs.adapters.sql.store_dump import (
    DUMP_FORMAT,
    DumpedJob,
    DumpError,
    check_dump,
    dump_jobs,
    import_jobs,
    purge_jobs,
)

PREFIX = "ujt_unit_store_"
NOW = datetime.now(timezone.utc)


def test_engine_options_with_a_dict_value_are_cached_by_value(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    # A dict value (connect_args) used to fail: TypeError: unhashable type: 'dict'.
    a = get_engine(
        url, engine_options={"connect_args": {"timeout": 3, "check_same_thread": False}, "echo": False}
    )
    same = get_engine(
        url, engine_options={"echo": False, "connect_args": {"check_same_thread": False, "timeout": 3}}
    )
    other = get_engine(url, engine_options={"connect_args": {"timeout": 4}})
    assert a is same
    assert other is not a
    with a.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


def message(task_id: str, worker: str, queue: str, tags: list[str] | None = None) -> str:
    headers: dict[str, object] = {"task": worker, "id": task_id, "eta": None}
    if tags is not None:
        headers["unified_jobs_tags"] = tags
    props = {
        "correlation_id": task_id,
        "priority": 0,
        "delivery_info": {"exchange": "", "routing_key": queue},
    }
    return json.dumps({"body": "W1tdLCB7fSwge31d", "headers": headers, "properties": props})


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(f"sqlite:///{tmp_path / 'jobs.db'}", PREFIX)


def add(
    store: JobStore, task_id: str, status: str, *, worker: str = "app.W", queue: str = "q", **extra: object
) -> None:
    values: dict[str, object] = {
        "queue": queue,
        "task_name": worker,
        "task_id": task_id,
        "payload": message(task_id, worker, queue, ["t"]),
        "status": status,
        "priority": 0,
        "run_at": NOW,
        "created_at": NOW,
        "updated_at": NOW,
        **extra,
    }
    with store._ready().begin() as conn:
        conn.execute(insert(tables_for(PREFIX).jobs).values(**values))


def statuses(store: JobStore) -> dict[str, str]:
    with store.engine.begin() as conn:
        rows = conn.execute(select(store.tables.jobs.c.task_id, store.tables.jobs.c.status)).all()
    return {task_id: status for task_id, status in rows}


def test_counts_filter_by_status_and_worker_and_count_delayed(store: JobStore) -> None:
    add(store, "a", "queued", run_at=NOW + timedelta(hours=1))
    add(store, "b", "queued")
    add(store, "c", "failed", worker="app.Other")
    add(store, "d", "cancelled", run_at=NOW + timedelta(hours=1))  # not delayed: not queued
    counts = store.counts()
    assert counts.by_queue == {"q": {"queued": 2, "failed": 1, "cancelled": 1}}
    assert counts.delayed == {"q": 1}
    assert store.counts(["failed"]).by_queue == {"q": {"failed": 1}}
    assert store.counts(worker="app.Other").by_queue == {"q": {"failed": 1}}
    assert [r.task_id for r in store.recent(limit=2)] == ["d", "c"]
    with pytest.raises(ValueError, match="unknown job status done"):
        store.counts(["done"])


def test_cancel_retry_tidy(store: JobStore) -> None:
    add(store, "a", "queued")
    add(store, "b", "queued", worker="app.Other")
    add(store, "c", "failed", attempts=3, last_error="boom")
    add(store, "d", "completed")
    assert store.cancel("app.W") == 1
    assert store.retry("app.Other") == 0
    assert store.retry() == 1
    with store.engine.begin() as conn:
        jobs = store.tables.jobs
        attempts, error = conn.execute(
            select(jobs.c.attempts, jobs.c.last_error).where(jobs.c.task_id == "c")
        ).one()
    assert (attempts, error) == (0, "boom")
    assert statuses(store) == {"a": "cancelled", "b": "queued", "c": "queued", "d": "completed"}
    assert store.tidy() == 2
    assert statuses(store) == {"b": "queued", "c": "queued"}


def test_purge_in_pages_with_a_dump_deletes_only_what_it_dumped(store: JobStore, tmp_path: Path) -> None:
    old = NOW - timedelta(days=10)
    for i in range(PAGE_SIZE + 3):
        add(store, f"old{i}", "completed", updated_at=old)
    add(store, "new", "completed")
    add(store, "old-queued", "queued", updated_at=old)
    seen: list[int] = []
    result = purge_jobs(store, ["completed"], NOW - timedelta(days=1), tmp_path / "dumps", seen.append)
    assert (result.dumped, result.deleted) == (PAGE_SIZE + 3, PAGE_SIZE + 3)
    assert sum(seen) == 2 * (PAGE_SIZE + 3)  # dumped, then deleted
    assert result.dump_file is not None
    lines = result.dump_file.read_text().splitlines()
    assert len(lines) == PAGE_SIZE + 3
    assert statuses(store) == {"new": "completed", "old-queued": "queued"}


def test_dump_and_import_keep_every_field(store: JobStore, tmp_path: Path) -> None:
    later = NOW + timedelta(hours=2)
    add(store, "x", "failed", queue="mail", priority=5, run_at=later, attempts=2, last_error="boom")
    path, n = dump_jobs(store, tmp_path)
    assert n == 1
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert record["format"] == DUMP_FORMAT
    assert (record["queue"], record["priority"], record["tags"], record["status"]) == (
        "mail",
        5,
        ["t"],
        "failed",
    )
    assert datetime.fromisoformat(record["run_at"]) == later
    store.tidy()
    with store.engine.begin() as conn:
        conn.execute(store.tables.jobs.delete())
    assert import_jobs(store, path) == 1
    with store.engine.begin() as conn:
        row = conn.execute(select(store.tables.jobs)).one()
    assert (row.queue, row.task_name, row.task_id, row.priority, row.status, row.attempts) == (
        "mail",
        "app.W",
        "x",
        5,
        "queued",
        0,
    )
    assert row.run_at.replace(tzinfo=timezone.utc) == later
    payload = json.loads(row.payload)
    assert payload["headers"]["eta"] == later.isoformat()  # the message agrees with the row
    assert payload["headers"]["unified_jobs_tags"] == ["t"]


def test_import_checks_the_whole_file_first(store: JobStore, tmp_path: Path) -> None:
    good = {"format": DUMP_FORMAT, "queue": "q", "worker": "app.W", "payload": {"properties": {}}}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "format": "loco"}) + "\n")
    with pytest.raises(DumpError, match="line 3: format is 'loco'"):
        import_jobs(store, path)
    assert store.counts().by_queue == {}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        # Cut to 255 it landed in a queue no worker reads: refused, never truncated.
        ({"queue": "q" * 300}, "queue is 300 characters long, longer than the 255 the jobs table holds"),
        ({"queue": " "}, "queue must be a non-empty string"),
        ({"priority": -1000}, "priority -1000 is out of range: 0 to 9"),
        ({"priority": 10}, "priority 10 is out of range"),
        ({"run_at": "0001-01-01T00:00:00+00:00"}, "run_at '0001-01-01T00:00:00+00:00' is out of range"),
        ({"created_at": "9999-12-31T00:00:00"}, "created_at '9999-12-31T00:00:00' is out of range"),
        ({"updated_at": "yesterday"}, "updated_at 'yesterday' is not an ISO 8601 time"),
        ({"worker": "w" * 256}, "worker is 256 characters long"),
        ({"payload": {"properties": {}, "headers": []}}, "payload headers must be an object"),
    ],
)
def test_import_refuses_values_the_table_or_the_app_would_get_wrong(
    store: JobStore, tmp_path: Path, change: dict[str, object], problem: str
) -> None:
    good = {"format": DUMP_FORMAT, "queue": "q", "worker": "app.W", "payload": {"properties": {}}}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **change}) + "\n")
    with pytest.raises(DumpError, match=f"^line 2: {re.escape(problem)}"):
        import_jobs(store, path)
    assert store.counts().by_queue == {}


def test_import_passes_each_job_to_the_check_first_and_a_null_priority_is_the_default(
    store: JobStore, tmp_path: Path
) -> None:
    body = {
        "body": "W1tdLCB7Im4iOiAxfSwge31d",
        "properties": {"body_encoding": "base64"},
    }  # [[], {"n": 1}, {}]
    lines = [
        {"format": DUMP_FORMAT, "queue": "q", "worker": "app.W", "priority": None, "payload": body},
        {"format": DUMP_FORMAT, "queue": "q", "worker": "celery.cleanup", "payload": {"properties": {}}},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    seen: list[DumpedJob] = []

    def check(job: DumpedJob) -> None:
        seen.append(job)
        if job.worker.startswith("celery."):
            raise ValueError(f"worker {job.worker!r} is Celery's own")

    with pytest.raises(DumpError, match=r"^line 2: worker 'celery\.cleanup' is Celery's own$"):
        import_jobs(store, path, check=check)
    assert store.counts().by_queue == {}
    first = seen[0]
    assert (first.line, first.worker, first.priority) == (1, "app.W", 0)
    assert (first.args, first.kwargs) == ([], {"n": 1})
    assert seen[1].body_error == "the message has no body (arguments)"

    path.write_text(json.dumps(lines[0]) + "\n")
    assert check_dump(path, check) == {("app.W", "q"): 1}
    assert store.counts().by_queue == {}  # checking imports nothing
    assert import_jobs(store, path, check=check) == 1
    assert store.counts().by_queue == {"q": {"queued": 1}}
