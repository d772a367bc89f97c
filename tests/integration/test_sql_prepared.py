"""The one-job enqueue of the SQL kinds (``adapters/sql/prepared.py``: one INSERT compiled once,
run on a pooled DBAPI connection in autocommit), on real SQLite files and a real PostgreSQL:
its row is the one SQLAlchemy's ``execute`` writes, it is committed on return, the pooled
connection is left as it was found, and a database error or a lost connection comes out as
SQLAlchemy's error with nothing written."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from tests.integration.conftest_sql import (  # noqa: F401  (fixture)
    PG_URI,
    SqlQueue,
    require_postgres,
    sqlq_fixture,
)
from unified_jobs.adapters.sql.leases import utcnow
from unified_jobs.adapters.sql.prepared import PreparedInsert
from unified_jobs.adapters.sql.queries import queries_for
from unified_jobs.adapters.sql.schema import ensure_schema_on

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sqlite_q(tmp_path: Path) -> Iterator[SqlQueue]:
    queue = SqlQueue("sqlite", f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path)
    yield queue
    queue.close()


@pytest.fixture
def postgres_q(tmp_path: Path) -> Iterator[SqlQueue]:
    require_postgres()
    queue = SqlQueue("postgres", PG_URI, tmp_path)
    yield queue
    queue.close()


def row(task_id: str, **extra: Any) -> dict[str, Any]:
    now = utcnow()
    values = {"queue": "q", "task_name": "w.Echo", "task_id": task_id, "payload": '{"body": "x"}'}
    return {**values, "priority": 3, "run_at": now, "now": now, **extra}


def prepared(sqlq: SqlQueue) -> tuple[PreparedInsert, Any]:
    ensure_schema_on(sqlq.engine, sqlq.tables)
    queries = queries_for(sqlq.tables, sqlq.engine.dialect.name)
    return PreparedInsert(sqlq.engine, queries.enqueue), queries


def test_its_row_is_the_one_sqlalchemys_execute_writes_and_is_committed_on_return(sqlq: SqlQueue) -> None:
    insert, queries = prepared(sqlq)
    jobs = sqlq.tables.jobs
    same = row("ours")
    insert(same)
    with sqlq.engine.begin() as conn:
        conn.execute(queries.enqueue, {**same, "task_id": "theirs"})
    # Read from a new connection: committed, not only visible to the connection that wrote it.
    with sqlq.engine.connect() as conn:
        rows = {r.task_id: r._asdict() for r in conn.execute(select(jobs))}
    ours, theirs = rows["ours"], rows["theirs"]
    for key in ("id", "task_id"):
        del ours[key], theirs[key]
    assert ours == theirs
    assert ours["status"] == "queued" and ours["priority"] == 3 and ours["attempts"] == 0


def test_the_pooled_connection_is_left_as_it_was_found(sqlq: SqlQueue) -> None:
    insert, _ = prepared(sqlq)
    insert(row("first"))
    # The next transaction on the pool's connection is a transaction again (not autocommit): a
    # rollback undoes its insert.
    with sqlq.engine.connect() as conn:
        jobs = sqlq.tables.jobs.name
        columns = (
            "queue, task_name, task_id, payload, status, priority, run_at, attempts, created_at, updated_at"
        )
        copied = columns.replace("task_id", "'rolled back'")
        conn.execute(text(f"INSERT INTO {jobs} ({columns}) SELECT {copied} FROM {jobs}"))
        conn.rollback()
    with sqlq.engine.connect() as conn:
        ids = [r.task_id for r in conn.execute(select(sqlq.tables.jobs.c.task_id))]
    assert ids == ["first"]


def test_a_database_error_is_sqlalchemys_and_writes_nothing(sqlq: SqlQueue) -> None:
    insert, _ = prepared(sqlq)
    with pytest.raises(DBAPIError) as caught:
        insert(row("no queue", queue=None))  # the column is NOT NULL
    assert caught.value.statement == insert.sql
    assert not caught.value.connection_invalidated
    insert(row("after"))  # the connection went back to the pool usable
    with sqlq.engine.connect() as conn:
        assert [r.task_id for r in conn.execute(select(sqlq.tables.jobs.c.task_id))] == ["after"]


def test_on_sqlite_a_held_write_lock_is_waited_for_then_the_insert_goes_in(sqlite_q: SqlQueue) -> None:
    sqlq = sqlite_q
    insert, _ = prepared(sqlq)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with sqlq.engine.begin() as conn:  # BEGIN IMMEDIATE: the write lock
            conn.execute(text("SELECT 1"))
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    threading.Timer(0.3, release.set).start()
    started = time.monotonic()
    insert(row("waited"))  # within the busy timeout: it waits, then writes
    waited = time.monotonic() - started
    holder.join(10)
    assert waited >= 0.2, "the insert went in while another connection held the write lock"
    with sqlq.engine.connect() as conn:
        assert [r.task_id for r in conn.execute(select(sqlq.tables.jobs.c.task_id))] == ["waited"]


@pytest.mark.postgres
def test_on_postgres_a_lost_connection_is_invalidated_and_the_next_insert_connects_anew(
    postgres_q: SqlQueue,
) -> None:
    import psycopg
    from sqlalchemy import create_engine

    from unified_jobs.adapters.sql.engine import normalize_db_url

    sqlq = postgres_q
    _, queries = prepared(sqlq)
    # An engine of the test's own with one pooled connection, so that the insert takes the one
    # whose backend is ended (the shared engine's pool is other tests' too).
    engine = create_engine(normalize_db_url(sqlq.db_uri), pool_size=1, max_overflow=0)
    try:
        insert = PreparedInsert(engine, queries.enqueue)
        insert(row("before"))
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with psycopg.connect(sqlq.db_uri, autocommit=True) as killer:  # not one of the pool's
            killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(OperationalError) as caught:
            insert(row("lost"))
        assert caught.value.connection_invalidated, "a lost connection must not go back to the pool"
        insert(row("after"))
        with engine.connect() as conn:
            ids = sorted(r.task_id for r in conn.execute(select(sqlq.tables.jobs.c.task_id)))
        assert ids == ["after", "before"]
    finally:
        engine.dispose()
