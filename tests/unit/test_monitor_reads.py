"""The dashboard's reads where they need no server: the in-memory store, the SQL store on a
SQLite file, and the text helpers of the SQL store. (Every backend's reads through real workers:
tests/contract/test_monitor.py; Redis and Postgres: tests/integration/test_monitor_stores.py.)"""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import insert, update

from unified_jobs.adapters.celery.kinds.sql import ERROR_HEADER, SqlJobStore, like_pattern
from unified_jobs.adapters.memory_store import MemoryJobStore
from unified_jobs.adapters.sql.store import body_text
from unified_jobs.core.job import Job, new_job_id
from unified_jobs.core.monitor import SEARCH_LIMIT, JobQuery
from unified_jobs.core.outcome import Outcome

PREFIX = "ujt_unit_monitor_"
NOW = datetime.now(timezone.utc)


def message(job_id: str, worker: str, kwargs: dict[str, object], **headers: object) -> str:
    """A row's payload as the SQL transport writes it (``json.dumps`` of the kombu message)."""
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": worker, "id": job_id, "eta": None, "retries": 0, **headers},
            "properties": {"correlation_id": job_id, "body_encoding": "base64", "delivery_tag": "x"},
        }
    )


def test_like_pattern_escapes_the_wildcards_and_writes_non_ascii_as_json_does() -> None:
    assert like_pattern("alice") == "%alice%"
    assert like_pattern("100%_done\\") == "%100\\%\\_done\\\\%"
    # json.dumps (the body's writer) escapes non-ASCII letters; the pattern matches that text
    assert like_pattern("Zoë") == "%Zo\\\\u00eb%"


def test_body_text_decodes_the_body_with_or_without_the_fast_path() -> None:
    payload = message("1", "w", {"who": "Zoë"})
    assert json.loads(body_text(payload) or "")[1] == {"who": "Zoë"}
    # Another key order (another writer): the slow path reads it the same.
    other = json.dumps(dict(reversed(json.loads(payload).items())), indent=1)
    assert body_text(other) == body_text(payload)
    plain = json.dumps({"body": '[[], {"a": 1}, {}]', "properties": {}})
    assert body_text(plain) == '[[], {"a": 1}, {}]'
    assert body_text("not json") == "not json"
    assert body_text(None) is None


# -- the SQL store on SQLite ------------------------------------------------------------------


@pytest.fixture
def sql(tmp_path: Path) -> SqlJobStore:
    return SqlJobStore(f"sqlite:///{tmp_path / 'monitor.db'}", PREFIX)


def add_rows(store: SqlJobStore, rows: list[dict[str, object]]) -> None:
    with store.table._ready().begin() as conn:
        conn.execute(insert(store.table.tables.jobs), rows)


def row(
    job_id: str,
    status: str = "queued",
    *,
    queue: str = "default",
    at: datetime = NOW,
    run_at: datetime | None = None,
    kwargs: dict[str, object] | None = None,
    **headers: object,
) -> dict[str, object]:
    worker = "w.Echo"
    return {
        "queue": queue,
        "task_name": worker,
        "task_id": job_id,
        "payload": message(job_id, worker, kwargs or {"n": 1}, **headers),
        "status": status,
        "priority": 0,
        "run_at": run_at or at,
        "attempts": 0 if status == "queued" else 1,
        "created_at": at,
        "updated_at": at,
    }


def test_sql_statuses_are_read_as_get_reads_them(sql: SqlJobStore) -> None:
    later = NOW + timedelta(hours=1)
    add_rows(
        sql,
        [
            row("queued", at=NOW - timedelta(seconds=5)),
            row("scheduled", run_at=later, at=NOW - timedelta(seconds=4)),
            row("retrying", run_at=later, at=NOW - timedelta(seconds=3), retries=1, **{ERROR_HEADER: "E: x"}),
            row("due-retry", at=NOW - timedelta(seconds=2), retries=1, **{ERROR_HEADER: "E: x"}),
            row("done", "completed", at=NOW - timedelta(seconds=1)),
            row("broken", "failed", queue="mail"),
        ],
    )
    for status, expected in [
        ("queued", ["queued"]),
        ("scheduled", ["scheduled"]),
        ("retrying", ["due-retry", "retrying"]),  # a retry stays one until it starts
        ("completed", ["done"]),
        ("failed", ["broken"]),
    ]:
        listed = sql.jobs(JobQuery(status=status))  # type: ignore[arg-type]
        assert [i.id for i in listed.jobs] == expected, status
        assert all(sql.get(i.id).status == status for i in listed.jobs)  # type: ignore[union-attr]
    assert [i.id for i in sql.jobs(JobQuery()).jobs] == [
        "broken",
        "done",
        "due-retry",
        "retrying",
        "scheduled",
        "queued",
    ]
    assert sql.status_counts() == {"queued": 1, "scheduled": 1, "retrying": 2, "completed": 1, "failed": 1}
    stats = {q.name: q for q in sql.queue_stats()}
    assert (stats["default"].queued, stats["default"].scheduled, stats["default"].failed) == (1, 3, 0)
    assert stats["default"].oldest_queued_at == NOW - timedelta(seconds=5)
    assert (stats["mail"].queued, stats["mail"].failed) == (0, 1)


def test_sql_run_now_makes_a_waiting_row_due_and_drops_its_eta(sql: SqlJobStore) -> None:
    later = NOW + timedelta(hours=1)
    add_rows(sql, [row("later", run_at=later, eta=later.isoformat()), row("now")])
    assert sql.run_now("later") is True
    info = sql.get("later")
    assert (
        info is not None
        and info.status == "queued"
        and info.run_at is not None
        and info.run_at <= datetime.now(timezone.utc)
    )
    with sql.table._ready().begin() as conn:
        payload = (
            conn.execute(sql.table.tables.jobs.select().where(sql.table.tables.jobs.c.task_id == "later"))
            .one()
            .payload
        )
    assert json.loads(payload)["headers"]["eta"] is None
    assert sql.run_now("later") is False, "due already"
    assert sql.run_now("now") is False
    assert sql.run_now("missing") is False


def test_sql_throughput_buckets_the_ended_rows_by_minute(sql: SqlJobStore) -> None:
    # The current minute (not NOW's, taken at import): the buckets end with it. Away from its
    # last second, so that the minute does not change before throughput() reads the clock.
    if datetime.now(timezone.utc).second >= 58:
        time.sleep(3)
    now = datetime.now(timezone.utc)
    minute = datetime.fromtimestamp(now.timestamp() // 60 * 60, timezone.utc)
    add_rows(
        sql,
        [
            row("a", "completed", at=minute + timedelta(seconds=1)),
            row("b", "completed", at=minute + timedelta(seconds=59)),
            row("c", "failed", at=minute - timedelta(seconds=1)),
            row("d", "completed", at=minute - timedelta(minutes=10)),  # outside 3 minutes
            row("e", "cancelled", at=minute),
        ],
    )
    buckets = sql.throughput(3)
    assert [b.start for b in buckets] == [
        minute - timedelta(minutes=2),
        minute - timedelta(minutes=1),
        minute,
    ]
    assert [(b.completed, b.failed) for b in buckets] == [(0, 0), (0, 1), (2, 0)]


def test_sql_text_search_looks_at_search_limit_rows_and_says_so(sql: SqlJobStore) -> None:
    rows = [
        row(f"j{i}", "completed", at=NOW - timedelta(seconds=SEARCH_LIMIT + 10 - i), kwargs={"n": i})
        for i in range(SEARCH_LIMIT + 10)
    ]
    rows[0]["payload"] = message("j0", "w.Echo", {"who": "the Oldest"})
    rows[-1]["payload"] = message(f"j{len(rows) - 1}", "w.Echo", {"who": "the Newest"})
    add_rows(sql, rows)
    found = sql.jobs(JobQuery(status="completed", text="NEWEST"))
    # found, but more might be past the rows looked at: it says so
    assert [i.id for i in found.jobs] == [f"j{len(rows) - 1}"] and found.searched == SEARCH_LIMIT
    full = sql.jobs(JobQuery(text='"n": ', limit=5))
    assert len(full.jobs) == 5 and full.more and full.searched is None, "a whole page needs no excuse"
    beyond = sql.jobs(JobQuery(text="oldest"))  # the oldest is past the newest SEARCH_LIMIT
    assert beyond.jobs == [] and beyond.searched == SEARCH_LIMIT and not beyond.more
    with sql.table._ready().begin() as conn:  # fewer candidates than the limit: a whole answer
        conn.execute(
            update(sql.table.tables.jobs)
            .where(sql.table.tables.jobs.c.task_id == "j0")
            .values(status="failed")
        )
    alone = sql.jobs(JobQuery(status="failed", text="oldest"))
    assert [i.id for i in alone.jobs] == ["j0"] and alone.searched is None
    nothing = sql.jobs(JobQuery(status="failed", text="nowhere"))
    assert nothing.jobs == [] and nothing.searched is None


# -- the in-memory store -----------------------------------------------------------------------


def test_memory_search_stops_at_search_limit_and_says_so() -> None:
    store = MemoryJobStore(size=SEARCH_LIMIT + 100)
    jobs = [
        Job(id=new_job_id(), name="w.Echo", queue="default", kwargs_json=json.dumps({"n": i}))
        for i in range(SEARCH_LIMIT + 5)
    ]
    oldest = Job(id="oldest", name="w.Other", queue="default", kwargs_json='{"who": "Oldest"}')
    store.record_enqueued([oldest])
    store.record_enqueued(jobs)
    assert store.jobs(JobQuery(text="oldest")).searched == SEARCH_LIMIT
    assert store.jobs(JobQuery(worker="w.Other")).searched == SEARCH_LIMIT
    assert store.jobs(JobQuery(queue="default", limit=5)).searched is None, "the queue needs no search"
    newest = store.jobs(JobQuery(text=json.dumps({"n": SEARCH_LIMIT + 4})))
    assert [i.id for i in newest.jobs] == [jobs[-1].id] and newest.searched == SEARCH_LIMIT
    full = store.jobs(JobQuery(text='"n": ', limit=5))
    assert len(full.jobs) == 5 and full.more and full.searched is None
    store.record_started(oldest)
    store.record_outcome(oldest, Outcome("succeeded", 1))
    found = store.jobs(JobQuery(status="completed", text="OLDEST"))
    assert [i.id for i in found.jobs] == ["oldest"] and found.searched is None
    assert sum(b.completed for b in store.throughput(2)) == 1
