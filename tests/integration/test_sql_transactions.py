"""``transaction=`` on the SQL kinds, looked at in the database: with the queue in the caller's
database, the job's row is written in the caller's transaction (seen inside it, invisible
outside it until the commit, gone with a rollback), and a unique key is checked there too; with
the queue elsewhere, the job is enqueued after the commit. No worker runs: the rows tell."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import Engine, create_engine, text

from tests.conftest import PG_HOST, PG_PORT, PG_URL, clear_sql_jobs, require_service, sql_prefix
from unified_jobs import Config, Jobs, Worker

PREFIX = sql_prefix("txn")


class Args(BaseModel):
    n: int


class Report(Worker[Args]):
    name = "txn.Report"

    def perform(self, args: Args) -> None:
        raise AssertionError("no worker runs in these tests")


@pytest.fixture(params=["postgres", "sqlite"])
def queue_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        require_service("PostgreSQL", PG_HOST, PG_PORT)
        return PG_URL
    return f"sqlite:///{tmp_path}/jobs.db"


@pytest.fixture
def jobs(queue_uri: str) -> Iterator[Jobs]:
    clear_sql_jobs(queue_uri, PREFIX)
    kind = "Postgres" if queue_uri.startswith("postgresql") else "Sqlite"
    config = {
        "workers": {"mode": "BackgroundQueue"},
        "queue": {"kind": kind, "uri": queue_uri, "table_prefix": PREFIX},
    }
    app = Jobs(Config.from_dict(config))
    app.register(Report)
    yield app
    app.shutdown()


def user_engine(uri: str) -> Engine:
    return create_engine(uri.replace("postgresql://", "postgresql+psycopg://", 1))


def rows(conn: Any, job_id: str) -> int:
    found = conn.execute(text(f"SELECT count(*) FROM {PREFIX}jobs WHERE task_id = :id"), {"id": job_id})
    return int(found.scalar_one())


def test_the_row_is_written_in_the_callers_transaction(jobs: Jobs, queue_uri: str) -> None:
    engine = user_engine(queue_uri)
    outside = user_engine(queue_uri)
    with engine.connect() as conn:
        conn.begin()
        handle = Report.perform_later({"n": 1}, transaction=conn)
        assert rows(conn, handle.id) == 1, "the row is in the caller's transaction"
        with outside.connect() as other:
            assert rows(other, handle.id) == 0, "and nobody else sees it before the commit"
        conn.rollback()
        assert rows(conn, handle.id) == 0, "the rollback took it away"
        conn.rollback()  # the count began a transaction
        conn.begin()
        kept = Report.perform_later({"n": 2}, transaction=conn)
        conn.commit()
    with outside.connect() as other:
        assert rows(other, kept.id) == 1
    assert jobs.status(kept) == "queued"
    assert jobs.status(handle) is None
    engine.dispose()
    outside.dispose()


def test_a_batch_is_written_in_the_transaction(jobs: Jobs, queue_uri: str) -> None:
    engine = user_engine(queue_uri)
    with engine.connect() as conn:
        conn.begin()
        handles = Report.perform_all_later([{"n": n} for n in range(50)], transaction=conn)
        assert sum(rows(conn, h.id) for h in handles) == 50
        conn.rollback()
    assert all(jobs.status(h) is None for h in handles)
    engine.dispose()


def test_a_unique_key_held_by_an_uncommitted_transaction(jobs: Jobs, queue_uri: str) -> None:
    """The second transaction waits for the first: it sees the first job once that commits, and
    takes the key itself if the first rolls back."""
    engine = user_engine(queue_uri)
    results: dict[str, str] = {}

    def second(label: str) -> None:
        with engine.begin() as conn:
            results[label] = Report.perform_later({"n": 3}, unique_key="k", transaction=conn).id

    for outcome in ("commit", "rollback"):
        with engine.connect() as conn:
            conn.begin()
            first = Report.perform_later({"n": 3}, unique_key="k", transaction=conn)
            waiter = threading.Thread(target=second, args=(outcome,))
            waiter.start()
            time.sleep(0.5)
            assert outcome not in results, "the second enqueue waits for the first transaction"
            if outcome == "commit":
                conn.commit()
            else:
                conn.rollback()
        waiter.join(timeout=30)
        assert not waiter.is_alive()
        if outcome == "commit":
            assert results["commit"] == first.id, "the first job holds the key"
            assert jobs.cancel(first)  # frees the key for the next round
        else:
            assert results["rollback"] != first.id, "the rolled-back job held nothing"
            assert jobs.status(results["rollback"]) == "queued"
            assert jobs.status(first) is None
    engine.dispose()


def test_another_database_enqueues_after_the_commit(jobs: Jobs, tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/app.db")
    with engine.connect() as conn:
        conn.begin()
        handle = Report.perform_later({"n": 4}, transaction=conn)
        assert jobs.status(handle) is None, "not enqueued before the commit"
        conn.commit()
    assert jobs.status(handle) == "queued"
    with engine.connect() as conn:
        conn.begin()
        dropped = Report.perform_later({"n": 5}, transaction=conn)
        conn.rollback()
    assert jobs.status(dropped) is None
    engine.dispose()


def test_a_tick_and_its_job_are_one_transaction(jobs: Jobs, queue_uri: str) -> None:
    """Where the schedule state is the queue's database, a scheduler that fails (or dies)
    between winning a tick and writing its job leaves neither: the next pass has the tick."""
    from datetime import datetime, timezone

    state = jobs.adapter.schedule_state()
    state.forget(["txn-tick"])
    tick = datetime(2026, 1, 1, tzinfo=timezone.utc)
    written: list[str] = []

    def enqueue_then_fail(transaction: Any) -> None:
        written.append(Report.perform_later({"n": 6}, transaction=transaction).id)
        raise ConnectionError("the scheduler died here")

    with pytest.raises(ConnectionError):
        state.claim("txn-tick", tick, "me:1", enqueue_then_fail)
    assert jobs.status(written[0]) is None, "the job was rolled back with the tick"
    assert "txn-tick" not in state.get(["txn-tick"])

    handle = state.claim("txn-tick", tick, "me:1", lambda t: Report.perform_later({"n": 7}, transaction=t))
    assert handle is not None and jobs.status(handle.id) == "queued"
    record = state.get(["txn-tick"])["txn-tick"]
    assert (record.last_tick, record.last_by, record.last_job_id) == (tick, "me:1", handle.id)
    assert (
        state.claim("txn-tick", tick, "other:2", lambda t: Report.perform_later({"n": 8}, transaction=t))
        is None
    )
    state.forget(["txn-tick"])
