"""``perform_later(transaction=...)``, the same on every backend: the job exists if and only if the
caller's transaction commits. Where the queue is that database (Postgres, SQLite) the job's row
is written in the transaction (tests/integration/test_sql_transactions.py looks at the row);
elsewhere the job is enqueued right after the commit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine, select
from sqlalchemy.orm import Session

from tests.contract.conftest import Harness
from tests.contract.contract_app import Echo, UniqueEcho
from unified_jobs.errors import InvalidOptionError

metadata = MetaData()
orders = Table(
    "ujt_contract_orders", metadata, Column("id", Integer, primary_key=True), Column("note", String(50))
)


@pytest.fixture
def engine(harness: Harness, tmp_path: Path) -> Iterator[Engine]:
    """The app's own database: the queue's, on the SQL kinds; elsewhere a SQLite file."""
    queue = harness.jobs.config.queue
    if queue is not None and queue.kind in ("Postgres", "Sqlite"):
        url = queue.uri.replace("postgresql://", "postgresql+psycopg://", 1)
    else:
        url = f"sqlite:///{tmp_path}/app.db"
    engine = create_engine(url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield engine
    metadata.drop_all(engine)
    engine.dispose()


def settle(harness: Harness, seconds: float = 1.5) -> None:
    """Give a job that should not exist the time a worker would take to run it."""
    harness.run_queued()
    if not harness.runs.on_drain and not harness.runs.at_enqueue:
        time.sleep(seconds)


def test_a_rolled_back_transaction_leaves_no_job(harness: Harness, engine: Engine) -> None:
    with engine.connect() as conn:
        conn.begin()
        conn.execute(orders.insert().values(id=1, note="never"))
        handle = Echo.perform_later({"n": 1}, transaction=conn)
        conn.rollback()
    settle(harness)
    assert harness.records() == []
    assert harness.jobs.status(handle) is None


def test_a_committed_transaction_leaves_exactly_one_job(harness: Harness, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(orders.insert().values(id=2, note="paid"))
        handle = Echo.perform_later({"n": 2}, transaction=conn)
        assert harness.records() == [], "nothing runs before the commit"
    (rec,) = harness.wait_for_count(1)
    assert rec["job"] == handle.id
    settle(harness, 0.5)
    assert len(harness.records()) == 1
    with engine.connect() as conn:
        assert conn.execute(select(orders.c.note)).scalars().all() == ["paid"]


def test_a_session_commits_or_rolls_back_its_jobs(harness: Harness, engine: Engine) -> None:
    with Session(engine) as session:
        with session.begin():
            session.execute(orders.insert().values(id=3, note="kept"))
            kept = Echo.perform_all_later([{"n": 3}, {"n": 4}], transaction=session)
        with session.begin():
            session.execute(orders.insert().values(id=4, note="dropped"))
            dropped = Echo.perform_later({"n": 5}, transaction=session)
            session.rollback()
    recs = harness.wait_for_count(2)
    settle(harness, 0.5)
    assert sorted(r["job"] for r in harness.records()) == sorted(h.id for h in kept)
    assert harness.jobs.status(dropped) is None
    assert len(recs) == 2


def test_a_rolled_back_savepoint_drops_its_jobs_only(harness: Harness, engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        kept = Echo.perform_later({"n": 10}, transaction=session)
        with session.begin_nested() as savepoint:
            dropped = Echo.perform_later({"n": 11}, transaction=session)
            savepoint.rollback()
        with session.begin_nested():
            also_kept = Echo.perform_later({"n": 12}, transaction=session)
    recs = harness.wait_for_count(2)
    settle(harness, 0.5)
    assert sorted(r["job"] for r in harness.records()) == sorted([kept.id, also_kept.id])
    assert harness.jobs.status(dropped) is None
    assert len(recs) == 2


def test_a_unique_job_in_a_transaction(harness: Harness, engine: Engine) -> None:
    with engine.begin() as conn:
        first = UniqueEcho.perform_later({"n": 6}, transaction=conn)

    def completed() -> bool:  # its record is written before it ends: wait for the end
        return harness.jobs.status(first) == "completed"

    assert harness.wait_until(completed), f"the job did not complete: {harness.jobs.job(first)}"
    with engine.begin() as conn:
        second = UniqueEcho.perform_later({"n": 6}, transaction=conn)
    recs = harness.wait_for_count(2)
    assert second.id != first.id, "the first job had ended: its key was free"
    assert [r["job"] for r in recs] == [first.id, second.id]


def test_what_is_not_a_transaction_is_refused(harness: Harness, engine: Engine) -> None:
    with pytest.raises(InvalidOptionError, match="takes a SQLAlchemy Connection or Session"):
        Echo.perform_later({"n": 7}, transaction=object())
    with engine.connect() as conn, pytest.raises(InvalidOptionError, match="not in a transaction"):
        Echo.perform_later({"n": 8}, transaction=conn)
    settle(harness, 0.5)
    assert harness.records() == []


def test_a_duplicate_in_a_transaction_is_not_enqueued(harness: Harness, engine: Engine) -> None:
    """A key held by a waiting job: in the caller's transaction (the SQL kinds, same database)
    the call gets the holder's handle; where the job is enqueued after the commit, the key is
    checked then, and the duplicate is not enqueued (its handle names no job)."""
    if harness.runs.at_enqueue:
        pytest.skip(f"jobs run {harness.runs.where}: a key is free again when perform_later returns")
    first = Echo.perform_later({"n": 30}, unique_key="txn-dup", wait=timedelta(minutes=1))
    with engine.begin() as conn:
        second = Echo.perform_later({"n": 31}, unique_key="txn-dup", transaction=conn)
    assert second.id == first.id or harness.jobs.status(second) is None
    assert harness.jobs.status(first) == "scheduled"
    assert harness.jobs.cancel(first)
    settle(harness, 0.5)
    assert harness.records() == []
