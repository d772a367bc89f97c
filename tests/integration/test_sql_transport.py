"""The SQL kombu transport driven directly through kombu, on PostgreSQL and SQLite."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from queue import Empty
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import func, select

from tests.conftest import PG_HOST, PG_PORT, PG_URL, require_service
from tests.integration.conftest_sql import SqlQueue, sqlq_fixture, wait_for  # noqa: F401  (fixture)
from unified_jobs.adapters.sql import (
    SCHEMA_VERSION,
    TRANSPORT_SCHEME,
    broker_url,
    ensure_schema,
    job_counts,
    transport_options,
)
from unified_jobs.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


@contextmanager
def connect(q: SqlQueue, **options: Any) -> Iterator[Connection]:
    with Connection(q.broker, transport_options=q.options(**options)) as conn:
        yield conn


def _put(conn: Connection, queue: str, body: Any, **kwargs: Any) -> None:
    conn.SimpleQueue(queue).put(body, **kwargs)


# --- helpers that need no database ------------------------------------------------------


def test_broker_url_maps_the_users_config() -> None:
    assert broker_url("Postgres", "postgresql://u@h:5432/db") == "ujsql+postgresql://u@h:5432/db"
    assert broker_url("Postgres", "postgres://u@h/db") == "ujsql+postgresql://u@h/db"
    assert broker_url("Sqlite", "sqlite:///jobs.db") == "ujsql+sqlite:///jobs.db"
    assert TRANSPORT_SCHEME == "ujsql"
    with pytest.raises(ConfigError, match="sqlite"):
        broker_url("Postgres", "sqlite:///jobs.db")
    with pytest.raises(ConfigError, match="file"):
        broker_url("Sqlite", "sqlite://")
    with pytest.raises(ConfigError, match="not a SQL queue"):
        broker_url("Redis", "redis://localhost")


def test_transport_options_validates_names_and_values() -> None:
    assert transport_options(10, 0.5, on_ack="delete") == {
        "lease_sec": 10,
        "poll_interval_sec": 0.5,
        "on_ack": "delete",
    }
    with pytest.raises(ValueError, match="unknown SQL transport option"):
        transport_options(10, 1, leese_sec=3)
    with pytest.raises(ValueError, match="on_ack"):
        transport_options(10, 1, on_ack="forget")
    with pytest.raises(ValueError, match="heartbeat_sec"):
        transport_options(10, 1, heartbeat_sec=10)
    with pytest.raises(ValueError, match="table_prefix"):
        transport_options(10, 1, table_prefix="Bad-Prefix")


# --- against each database ------------------------------------------------------------


def test_schema_is_created_once_and_versioned(sqlq: SqlQueue) -> None:
    assert ensure_schema(sqlq.broker, sqlq.prefix) == SCHEMA_VERSION
    assert ensure_schema(sqlq.db_uri, sqlq.prefix) == SCHEMA_VERSION
    with sqlq.engine.begin() as conn:
        versions = conn.execute(select(sqlq.tables.version.c.version)).scalars().all()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert job_counts(sqlq.db_uri, sqlq.prefix) == {}


def test_a_version_1_schema_is_upgraded_in_place(sqlq: SqlQueue) -> None:
    from sqlalchemy import insert, inspect

    from unified_jobs.adapters.sql import schema

    tables = sqlq.tables
    with sqlq.engine.begin() as conn:  # what unified_jobs 0.1 created
        schema._v1(conn, tables)
        conn.execute(insert(tables.version).values(version=1, applied_at=func.now()))
    with connect(sqlq) as conn:
        _put(conn, "q", "kept")
        assert ensure_schema(sqlq.db_uri, sqlq.prefix) == SCHEMA_VERSION  # already done on connect
        with sqlq.engine.begin() as db:
            assert inspect(db).has_table(tables.cancels.name)
            versions = db.execute(select(tables.version.c.version)).scalars().all()
        assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))
        assert conn.SimpleQueue("q").get(timeout=2).payload == "kept"


def test_a_jobs_table_dropped_by_hand_is_created_again_though_the_version_table_remains(
    sqlq: SqlQueue,
) -> None:
    """The version table said "done" while the jobs table was gone, and every enqueue failed
    on the missing table: the schema check looks for the jobs table too."""
    from sqlalchemy import inspect, text

    from unified_jobs.adapters.sql import schema

    assert ensure_schema(sqlq.db_uri, sqlq.prefix) == SCHEMA_VERSION
    with sqlq.engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {sqlq.tables.jobs.name}"))
    schema._done.clear()  # as in a new process
    with connect(sqlq) as conn:
        _put(conn, "q", "after the drop")
        assert conn.SimpleQueue("q").get(timeout=2).payload == "after the drop"
    with sqlq.engine.begin() as db:
        assert inspect(db).has_table(sqlq.tables.jobs.name)
        versions = db.execute(select(sqlq.tables.version.c.version)).scalars().all()
    assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))


def test_priority_then_age_orders_the_claim_and_ack_completes(sqlq: SqlQueue) -> None:
    with connect(sqlq) as conn:
        for name, priority in [("a", 0), ("b", 3), ("c", 0), ("d", 9)]:
            _put(conn, "q", name, priority=priority)
        q = conn.SimpleQueue("q")
        got = []
        for _ in range(4):
            m = q.get(timeout=2)
            got.append(m.payload)
            m.ack()
        assert got == ["d", "b", "a", "c"]
    assert job_counts(sqlq.db_uri, sqlq.prefix) == {"q": {"completed": 4}}


def test_ack_can_delete_instead(sqlq: SqlQueue) -> None:
    with connect(sqlq, on_ack="delete") as conn:
        _put(conn, "q", "x")
        conn.SimpleQueue("q").get(timeout=2).ack()
    assert sqlq.rows() == []


def test_reject_fails_and_requeue_puts_back(sqlq: SqlQueue) -> None:
    with connect(sqlq) as conn:
        _put(conn, "q", "x")
        q = conn.SimpleQueue("q")
        q.get(timeout=2).reject(requeue=True)
        (row,) = sqlq.rows()
        assert (row.status, row.lease_owner) == ("queued", None)
        m = q.get(timeout=2)
        assert m.delivery_info["redelivered"] is True
        m.reject()
    (row,) = sqlq.rows()
    assert (row.status, row.attempts) == ("failed", 2)
    assert "rejected" in row.last_error


def test_closing_the_connection_returns_unacked_jobs_at_once(sqlq: SqlQueue) -> None:
    with connect(sqlq) as conn:
        _put(conn, "q", "x")
        conn.SimpleQueue("q").get(timeout=2)  # never acked
        assert sqlq.status_counts() == {"processing": 1}
    assert sqlq.status_counts() == {"queued": 1}


def test_a_dead_consumers_job_comes_back_after_its_lease(sqlq: SqlQueue) -> None:
    with connect(sqlq, lease_sec=1.0) as dead, connect(sqlq, lease_sec=1.0) as alive:
        _put(dead, "q", "x")
        dq = dead.SimpleQueue("q")
        dq.get(timeout=2)
        # Simulate death: the heartbeat stops and nothing is ever acked or restored.
        channel = dq.channel
        channel._heartbeat.stop()
        channel.qos.restore_at_shutdown = False
        channel.leases.forget_all()
        aq = alive.SimpleQueue("q")
        taken = time.monotonic()
        m = aq.get(timeout=5)
        assert time.monotonic() - taken >= 0.5  # not before the lease ran out
        assert m.payload == "x" and m.delivery_info["redelivered"] is True
        m.ack()
    (row,) = sqlq.rows()
    assert (row.status, row.attempts) == ("completed", 2)


def test_heartbeat_keeps_a_long_job_leased(sqlq: SqlQueue) -> None:
    with connect(sqlq, lease_sec=1.0) as holder, connect(sqlq, lease_sec=1.0) as other:
        _put(holder, "q", "x")
        m = holder.SimpleQueue("q").get(timeout=2)
        with pytest.raises(Empty):
            other.SimpleQueue("q").get(timeout=3)  # three leases long
        m.ack()
    (row,) = sqlq.rows()
    assert (row.status, row.attempts) == ("completed", 1)


def test_an_eta_job_is_not_claimed_before_it_is_due(sqlq: SqlQueue) -> None:
    eta = (datetime.now(timezone.utc) + timedelta(seconds=1.5)).isoformat()
    with connect(sqlq) as conn:
        _put(conn, "q", "later", headers={"eta": eta})
        q = conn.SimpleQueue("q")
        with pytest.raises(Empty):
            q.get(timeout=1)
        assert sqlq.status_counts() == {"queued": 1}
        m = q.get(timeout=3)
        assert datetime.now(timezone.utc) >= datetime.fromisoformat(eta)
        m.ack()


def test_a_due_row_whose_message_says_a_later_eta_is_delivered_due_now(sqlq: SqlQueue) -> None:
    # A row moved to now (``jobs retry``, an import, an edit) whose message still carries its
    # old eta (year 9999 here): a worker would hold it, leased and in a slot, until then.
    with connect(sqlq) as conn:
        _put(conn, "q", "far", headers={"eta": "9999-12-31T00:00:00+00:00"})
        with sqlq.engine.begin() as db:
            db.execute(sqlq.tables.jobs.update().values(run_at=datetime.now(timezone.utc)))
        m = conn.SimpleQueue("q").get(timeout=3)
        assert m.payload == "far"
        assert m.headers.get("eta") is None, m.headers
        m.ack()
    assert [r.status for r in sqlq.rows()] == ["completed"]


def test_purge_deletes_only_queued_jobs_of_that_queue(sqlq: SqlQueue) -> None:
    with connect(sqlq, batch_size=1) as conn:
        for _ in range(3):
            _put(conn, "a", "x")
        for _ in range(2):
            _put(conn, "b", "y")
        conn.SimpleQueue("a").get(timeout=2)  # one of "a" is processing
        channel = conn.default_channel
        assert channel._size("a") == 2
        assert channel.queue_purge("a") == 2
        assert channel._size("a") == 0
        assert channel._size("b") == 2
        assert job_counts(sqlq.db_uri, sqlq.prefix) == {"a": {"processing": 1}, "b": {"queued": 2}}


def test_an_idle_consumer_is_woken_at_once(sqlq: SqlQueue) -> None:
    # Polls far apart, so only a wake-up (NOTIFY, or the in-process poke) can be this fast.
    slow = {"poll_interval_sec": 30.0, "sqlite_poll_interval_sec": 30.0}
    received: list[float] = []

    def consume() -> None:
        with connect(sqlq, **slow) as conn:
            conn.SimpleQueue("q").get(timeout=10).ack()
            received.append(time.monotonic())

    with connect(sqlq, **slow) as producer:
        producer.SimpleQueue("q").qsize()  # schema in place before the consumer polls
        consumer = threading.Thread(target=consume)
        consumer.start()
        time.sleep(1.0)  # the consumer has polled once and is now waiting
        sent = time.monotonic()
        _put(producer, "q", "x")
        consumer.join(15)
    assert received, "the consumer never got the job"
    assert received[0] - sent < 0.5


def test_a_consumer_is_woken_by_another_process(sqlq: SqlQueue) -> None:
    """Postgres: NOTIFY. SQLite: a datagram to each consumer's socket after the commit (and a
    socket left by a dead consumer is removed by the first producer that meets it)."""
    import json
    import socket
    import subprocess
    import sys

    from unified_jobs.adapters.sql.wakeup import socket_folder

    slow = {"poll_interval_sec": 30.0, "sqlite_poll_interval_sec": 30.0}
    stale = None
    if sqlq.kind == "sqlite":
        folder = socket_folder(str(sqlq.engine.url.database), sqlq.prefix)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        stale = folder / "1-dead"
        dead.bind(str(stale))
        dead.close()  # bound, then closed: its file stays, nobody reads it
    with connect(sqlq, **slow) as conn:
        q = conn.SimpleQueue("q")
        q.qsize()
        code = (
            "import unified_jobs.adapters.sql, kombu, sys, json, time\n"
            "with kombu.Connection(sys.argv[1], transport_options=json.loads(sys.argv[2])) as c:\n"
            "    q = c.SimpleQueue('q')\n"
            "    q.qsize()\n"
            "    time.sleep(1.0)\n"  # the consumer has polled once and waits (30 s polls)
            "    q.put('x')\n"
            "    print(time.time(), flush=True)\n"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", code, sqlq.broker, json.dumps(sqlq.options(**slow))],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            q.get(timeout=15).ack()
            received = time.time()
            out, _ = child.communicate(timeout=15)
        finally:
            child.kill()
        sent = float(out.split()[-1])
        assert received - sent < 0.5, f"woken {received - sent:.2f} s after the commit: by a poll?"
    if stale is not None:
        assert not stale.exists(), "the dead consumer's socket was not removed"


def test_an_undecodable_row_is_failed_and_consumption_goes_on(sqlq: SqlQueue) -> None:
    sqlq.ensure_schema()
    jobs = sqlq.tables.jobs
    now = datetime.now(timezone.utc)
    with sqlq.engine.begin() as conn:
        conn.execute(
            jobs.insert().values(
                queue="q",
                payload="{oops",
                status="queued",
                priority=5,
                run_at=now,
                attempts=0,
                created_at=now,
                updated_at=now,
            )
        )
    with connect(sqlq) as conn:
        _put(conn, "q", "good")
        m = conn.SimpleQueue("q").get(timeout=3)
        assert m.payload == "good"
        m.ack()
    rows = sqlq.rows()
    assert [r.status for r in rows] == ["failed", "completed"]
    assert rows[0].last_error.startswith("undecodable payload: JSONDecodeError")
    with sqlq.engine.begin() as conn:
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == 2


def test_many_consumers_in_threads_never_share_a_job(sqlq: SqlQueue) -> None:
    n = 300
    with connect(sqlq) as conn:
        for i in range(n):
            _put(conn, "q", i)
    seen: list[int] = []
    lock = threading.Lock()

    def consume() -> None:
        with connect(sqlq, batch_size=5) as conn:
            q = conn.SimpleQueue("q")
            while True:
                try:
                    m = q.get(timeout=1)
                except Empty:
                    return
                with lock:
                    seen.append(m.payload)
                m.ack()

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(seen) == list(range(n))
    wait_for(lambda: sqlq.status_counts() == {"completed": n}, 5, "every row completed")


def test_cancel_requests_reach_only_the_run_they_were_made_for(sqlq: SqlQueue) -> None:
    from sqlalchemy import insert, update

    from unified_jobs.adapters.celery.kinds.sql import SqlJobStore

    ensure_schema(sqlq.db_uri, sqlq.prefix)
    store = SqlJobStore(sqlq.db_uri, sqlq.prefix)
    jobs = sqlq.tables.jobs
    now = datetime.now(timezone.utc)
    row = {"queue": "q", "payload": "{}", "run_at": now, "created_at": now, "updated_at": now}
    with sqlq.engine.begin() as conn:
        conn.execute(insert(jobs).values(task_id="running", status="processing", **row))
        conn.execute(insert(jobs).values(task_id="waiting", status="queued", **row))
    assert not store.request_cancel("waiting")  # not running: jobs.cancel cancels the row itself
    assert not store.request_cancel("nope")
    assert store.request_cancel("running")
    assert store.cancel_requested(["running", "waiting"]) == {"running"}
    assert store.cancel_requested(["running"]) == set()  # a request is handed over once
    assert store.request_cancel("running")
    with sqlq.engine.begin() as conn:  # the job ended and was claimed again later: a new run
        later = datetime.now(timezone.utc) + timedelta(seconds=1)
        conn.execute(update(jobs).where(jobs.c.task_id == "running").values(updated_at=later))
    assert store.cancel_requested(["running"]) == set()


def test_a_version_6_schema_gains_the_result_columns_and_keeps_its_rows(sqlq: SqlQueue) -> None:
    from sqlalchemy import insert, inspect

    from unified_jobs.adapters.sql import schema

    tables, jobs = sqlq.tables, sqlq.tables.jobs
    now = datetime.now(timezone.utc)
    with sqlq.engine.begin() as conn:  # what unified_jobs at schema version 6 created
        for step in range(1, 7):
            schema._MIGRATIONS[step](conn, tables)
            conn.execute(insert(tables.version).values(version=step, applied_at=func.now()))
        for name in ("result_json", "error_class"):  # step 1 now makes them: as version 6 did not
            conn.exec_driver_sql(f"ALTER TABLE {jobs.name} DROP COLUMN {name}")
        assert "result_json" not in {c["name"] for c in inspect(conn).get_columns(jobs.name)}
        row = {"queue": "q", "status": "failed", "run_at": now, "created_at": now, "updated_at": now}
        conn.execute(insert(jobs).values(payload="{}", task_id="old", last_error="ValueError: x", **row))
    assert ensure_schema(sqlq.db_uri, sqlq.prefix) == SCHEMA_VERSION == 7
    with sqlq.engine.begin() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns(jobs.name)}
        versions = conn.execute(select(tables.version.c.version)).scalars().all()
    assert {"result_json", "error_class"} <= columns
    assert sorted(versions) == list(range(1, 8))
    (old,) = sqlq.rows()
    assert (old.task_id, old.last_error, old.result_json, old.error_class) == (
        "old",
        "ValueError: x",
        None,
        None,
    )
    with connect(sqlq) as conn:  # and the queue works on it
        _put(conn, "q", "new")
        conn.SimpleQueue("q").get(timeout=2).ack()
    assert [r.status for r in sqlq.rows()] == ["failed", "completed"]


def test_a_result_is_written_by_the_ack_or_by_the_process_that_ran_the_job(sqlq: SqlQueue) -> None:
    from unified_jobs.adapters.celery.kinds.sql import SqlJobStore
    from unified_jobs.adapters.sql import leases

    store = SqlJobStore(sqlq.db_uri, sqlq.prefix)
    with connect(sqlq) as conn:
        for task_id in ("here", "child"):
            _put(conn, "q", task_id, headers={"id": task_id})
        q = conn.SimpleQueue("q")
        here, child = q.get(timeout=2), q.get(timeout=2)
        assert (here.payload, child.payload) == ("here", "child")
        # Held by this process (a threads or solo pool): noted, written by the ack.
        store.record_result(here.delivery_tag, "here", {"n": 1})
        assert [r.result_json for r in sqlq.rows()] == [None, None]
        # Held by none here (a prefork pool's child, whose parent acks): written at once.
        channel = q.channel
        leases._here.discard(channel.leases)
        try:
            store.record_result(child.delivery_tag, "child", [2, "two"])
            assert [r.result_json for r in sqlq.rows()] == [None, '[2, "two"]']
            store.record_result("not a tag", "nobody", 3)  # nothing to write, no error
        finally:
            leases._here.add(channel.leases)
        here.ack()
        child.ack()
    assert [(r.status, r.result_json) for r in sqlq.rows()] == [
        ("completed", '{"n": 1}'),
        ("completed", '[2, "two"]'),
    ]
    here_info, child_info = store.get("here"), store.get("child")
    assert here_info is not None and here_info.result == {"n": 1}
    assert child_info is not None and child_info.result == [2, "two"]


def test_with_on_ack_delete_no_result_is_written(sqlq: SqlQueue) -> None:
    from unified_jobs.adapters.celery.kinds.sql import SqlJobStore

    store = SqlJobStore(sqlq.db_uri, sqlq.prefix, on_ack="delete")
    with connect(sqlq, on_ack="delete") as conn:
        _put(conn, "q", "x", headers={"id": "x"})
        m = conn.SimpleQueue("q").get(timeout=2)
        store.record_result(m.delivery_tag, "x", {"n": 1})
        m.channel.note_result(m.delivery_tag, '{"n": 1}')  # the channel ignores it too
        assert [r.result_json for r in sqlq.rows()] == [None]
        m.ack()
    assert sqlq.rows() == []


def test_a_noted_failure_writes_the_error_class_and_a_lost_lease_clears_it(sqlq: SqlQueue) -> None:
    from sqlalchemy import update

    with connect(sqlq) as conn:
        _put(conn, "q", "x")
        m = conn.SimpleQueue("q").get(timeout=2)
        m.channel.note_failure(m.delivery_tag, "PaymentDeclined: no", "myapp.jobs.PaymentDeclined")
        m.ack()
    (row,) = sqlq.rows()
    assert (row.status, row.last_error, row.error_class) == (
        "failed",
        "PaymentDeclined: no",
        "myapp.jobs.PaymentDeclined",
    )
    jobs = sqlq.tables.jobs
    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    with sqlq.engine.begin() as db:  # claimed again, by an owner that died
        db.execute(update(jobs).values(status="processing", lease_owner="dead", lease_expires_at=past))
    # A new owner reaps from one lease after it was made (live owners renew by then).
    with connect(sqlq, lease_sec=0.5) as conn:
        assert conn.default_channel.leases.heartbeat() == 0
        time.sleep(0.6)
        assert conn.default_channel.leases.heartbeat() == 1
    (row,) = sqlq.rows()
    assert row.status == "queued" and row.last_error.startswith("lease expired") and row.error_class is None


def test_sqlite_busy_is_not_an_outage_an_outcome_waits_and_reaping_is_not_held_back(tmp_path: Any) -> None:
    """SQLite's lock held by another connection past the busy timeout: the outcome that met it
    is kept and written once the lock is free, and the error is not taken for an outage (which
    would postpone reaping by one lease each time: under steady contention, for good)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from tests.integration.conftest_sql import two_owners
    from unified_jobs.adapters.sql.engine import get_engine
    from unified_jobs.adapters.sql.leases import is_busy

    path = tmp_path / "busy.db"
    engine = get_engine(f"sqlite:///{path}", busy_timeout_sec=0.2)
    leases, dead, tables = two_owners(engine, "uj_busy_", 2)
    (mine,) = leases.claim(["q"], 1)
    tag = leases.hold(mine)
    (theirs,) = dead.claim(["q"], 1)
    dead.hold(theirs)
    dead.forget_all()  # its owner dies: nobody renews j1's lease
    time.sleep(1.1)  # j1's lease expired, and one lease since `leases` was made
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock, held
    try:
        leases.settle(tag, "ack")
        with pytest.raises(OperationalError) as busy:
            leases.heartbeat()
        assert is_busy(busy.value), busy.value
        assert not leases.failing, "a busy database was taken for one that does not answer"
        assert leases.holds_claims(), "the ack that met the lock was dropped"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert leases.heartbeat() == 1, "reaping was held back after a lock, as after an outage"
    assert not leases.holds_claims()
    with engine.begin() as conn:
        rows = conn.execute(select(tables.jobs.c.task_id, tables.jobs.c.status))
        statuses = {r.task_id: r.status for r in rows}
    assert statuses == {"j0": "completed", "j1": "queued"}
    engine.dispose()


def _terminate_backend(engine: Any) -> int:
    """The pid of the pooled connection's server process, which is then terminated from
    another connection (as an admin, a failover or a pooler's restart would)."""
    import psycopg
    from sqlalchemy import text

    with engine.connect() as conn:
        pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    time.sleep(0.1)  # the server process has exited (well within PING_AFTER_IDLE_SEC)
    return pid


def _backend_pid(engine: Any) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_pooled_postgres_connection_lost_while_idle_is_replaced_without_an_error() -> None:
    """A connection idle for more than PING_AFTER_IDLE_SEC is pinged as it is handed out: one
    the server dropped meanwhile is replaced, and the caller sees no error."""
    from unified_jobs.adapters.sql import engine as engines

    require_service("PostgreSQL", PG_HOST, PG_PORT)
    engine = engines.get_engine(
        PG_URL, engine_options={"pool_size": 1, "max_overflow": 0, "pool_timeout": 31}
    )
    dropped = _terminate_backend(engine)
    time.sleep(engines.PING_AFTER_IDLE_SEC + 0.2)
    assert _backend_pid(engine) != dropped


def test_a_postgres_connection_used_a_moment_ago_is_not_pinged_and_a_lost_one_fails_once() -> None:
    """Within PING_AFTER_IDLE_SEC of its last use a connection is handed out without a round
    trip; if the server dropped it in that second, the statement fails with a database error
    (nothing half-done: the connection was gone), and the pool connects anew for the next."""
    from sqlalchemy.exc import OperationalError

    from unified_jobs.adapters.sql import engine as engines

    require_service("PostgreSQL", PG_HOST, PG_PORT)
    engine = engines.get_engine(
        PG_URL, engine_options={"pool_size": 1, "max_overflow": 0, "pool_timeout": 32}
    )
    pings: list[int] = []
    do_ping = engine.dialect.do_ping
    engine.dialect.do_ping = lambda conn: pings.append(1) or do_ping(conn)  # type: ignore[method-assign]
    try:
        _backend_pid(engine)  # connected, so checked in just now
        before = len(pings)
        pid = _backend_pid(engine)
        assert len(pings) == before, "a connection used a moment ago was pinged"
        dropped = _terminate_backend(engine)
        assert dropped == pid
        with pytest.raises(OperationalError):
            _backend_pid(engine)
        assert _backend_pid(engine) != dropped
    finally:
        engine.dialect.do_ping = do_ping  # type: ignore[method-assign]
