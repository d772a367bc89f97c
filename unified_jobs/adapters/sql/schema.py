"""The SQL queue's schema: tables, indexes, the Postgres wake-up trigger, and its version.

All DDL of the SQL queue lives here; all DML in ``queries.py`` (remote control's in
``broadcast.py``). Tables are named ``<prefix>jobs``, ``<prefix>schema_version`` and so on
(prefix ``unified_jobs_`` by default), so several apps, or test runs, can share one database.

Schema changes: bump ``SCHEMA_VERSION`` and add the step to ``_MIGRATIONS``; ``ensure_schema``
applies the missing steps in order, under a lock, and records each in the version table.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection

__all__ = [
    "DEFAULT_TABLE_PREFIX",
    "SCHEMA_VERSION",
    "STATUSES",
    "Tables",
    "drop_schema",
    "ensure_schema_on",
    "tables_for",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 7
DEFAULT_TABLE_PREFIX = "unified_jobs_"

QUEUED = "queued"
PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
#: Every status a job row can have (Loco's names).
STATUSES = (QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED)

#: The rows the unique index covers: those whose job waits or runs and has a key. Literal SQL,
#: so that the enqueue's ``ON CONFLICT ... WHERE`` can repeat it word for word (a database
#: infers the partial index from that predicate; bound parameters would not match).
UNIQUE_HOLDERS = f"unique_key IS NOT NULL AND status IN ('{QUEUED}', '{PROCESSING}')"

# Lower-case identifiers only: they are used unquoted in DDL and as the NOTIFY channel name.
_PREFIX_RE = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class Tables:
    """The SQLAlchemy tables for one table prefix."""

    prefix: str
    metadata: MetaData
    jobs: Table
    version: Table
    #: Cancel requests for running jobs, by task id (``jobs.cancel`` from any process; the
    #: worker running the job polls it).
    cancels: Table
    #: Recurring jobs: the last tick each schedule enqueued (``unified_jobs.scheduler``).
    schedules: Table
    #: Worker processes' heartbeats (``core.monitor.WorkerBeat``), one row per process.
    workers: Table
    #: Exchange bindings every process sees (fanout and topic exchanges, control queues);
    #: remote control, see ``broadcast.py``.
    bindings: Table
    #: Messages of control queues (Celery's pidbox, replies, events): never jobs.
    control: Table

    @property
    def notify_channel(self) -> str:
        """The Postgres LISTEN/NOTIFY channel: the jobs table's name."""
        return self.jobs.name


def _id_type() -> BigInteger:
    # BIGINT on Postgres; on SQLite only "INTEGER PRIMARY KEY" is the auto-incrementing rowid.
    return BigInteger().with_variant(Integer(), "sqlite")


@lru_cache(maxsize=64)
def tables_for(prefix: str = DEFAULT_TABLE_PREFIX) -> Tables:
    """The tables named with ``prefix`` (validated: lower-case letters, digits, underscores)."""
    if not _PREFIX_RE.match(prefix):
        raise ValueError(
            f"table_prefix {prefix!r} is invalid: use up to 40 lower-case letters, digits and "
            "underscores, starting with a letter or underscore (e.g. 'unified_jobs_')"
        )
    md = MetaData()
    statuses = ", ".join(f"'{s}'" for s in STATUSES)
    jobs = Table(
        f"{prefix}jobs",
        md,
        Column("id", _id_type(), primary_key=True, autoincrement=True),
        Column("queue", String(255), nullable=False),
        Column("task_name", String(255), nullable=True),  # Celery's task (= worker) name
        Column("task_id", String(255), nullable=True),  # Celery's task id; not unique (retries)
        Column("payload", Text, nullable=False),  # the whole kombu message, JSON
        Column("status", String(16), nullable=False, server_default=QUEUED),
        Column("priority", Integer, nullable=False, server_default="0"),  # higher runs first
        Column("run_at", DateTime(timezone=True), nullable=False),
        Column("attempts", Integer, nullable=False, server_default="0"),  # claims so far
        Column("lease_owner", String(255), nullable=True),
        Column("lease_expires_at", DateTime(timezone=True), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Column("last_error", Text, nullable=True),
        # Unique jobs: while a row with a key is queued or processing, no other row may hold
        # it (the partial unique index below); past ``unique_until`` an enqueue may take it over.
        Column("unique_key", String(255), nullable=True),
        Column("unique_until", DateTime(timezone=True), nullable=True),
        # Schema step 7: what a completed job's perform returned, as JSON text (NULL: None, or
        # not kept), and the dotted path of the last failed attempt's exception class.
        Column("result_json", Text, nullable=True),
        Column("error_class", Text, nullable=True),
        CheckConstraint(f"status IN ({statuses})", name=f"{prefix}jobs_status_check"),
    )
    queued = jobs.c.status == QUEUED
    processing = jobs.c.status == PROCESSING
    # Serves the claim: equality on queue, then the ORDER BY, over ready rows only.
    Index(
        f"{prefix}jobs_ready_idx",
        jobs.c.queue,
        jobs.c.priority.desc(),
        jobs.c.run_at,
        jobs.c.id,
        postgresql_where=queued,
        sqlite_where=queued,
    )
    # Serves the lease reaper and heartbeats.
    Index(
        f"{prefix}jobs_lease_idx",
        jobs.c.lease_expires_at,
        postgresql_where=processing,
        sqlite_where=processing,
    )
    Index(f"{prefix}jobs_task_id_idx", jobs.c.task_id)
    # Schema step 6: the dashboard's pages of one status, newest change first (and the
    # throughput's range of ended jobs).
    Index(f"{prefix}jobs_status_updated_idx", jobs.c.status, jobs.c.updated_at, jobs.c.id)
    holds_key = text(UNIQUE_HOLDERS)
    Index(
        f"{prefix}jobs_unique_idx",
        jobs.c.unique_key,
        unique=True,
        postgresql_where=holds_key,
        sqlite_where=holds_key,
    )
    version = Table(
        f"{prefix}schema_version",
        md,
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("applied_at", DateTime(timezone=True), nullable=False),
    )
    cancels = Table(
        f"{prefix}cancel_requests",
        md,
        Column("task_id", String(255), primary_key=True),
        Column("requested_at", DateTime(timezone=True), nullable=False),
    )
    schedules = Table(
        f"{prefix}schedules",
        md,
        Column("name", String(255), primary_key=True),
        # The newest tick of the schedule that was enqueued, and by which scheduler.
        Column("last_tick", DateTime(timezone=True), nullable=True),
        Column("last_by", String(255), nullable=True),
        Column("last_job_id", String(255), nullable=True),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )
    workers = Table(
        f"{prefix}workers",
        md,
        Column("id", String(255), primary_key=True),
        Column("host", String(255), nullable=False),
        Column("pid", Integer, nullable=False),
        Column("kind", String(32), nullable=False),
        Column("queues", Text, nullable=False),  # JSON list
        Column("concurrency", Integer, nullable=False),
        Column("current", Text, nullable=False),  # JSON list of the running jobs' task ids
        Column("started_at", DateTime(timezone=True), nullable=False),
        Column("beat_at", DateTime(timezone=True), nullable=False),
        Column("polled_at", DateTime(timezone=True), nullable=True),
        Column("interval", Float, nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Column("extra", Text, nullable=False),  # JSON object
    )
    bindings, control = _broadcast_tables(prefix, md)
    return Tables(
        prefix=prefix,
        metadata=md,
        jobs=jobs,
        version=version,
        cancels=cancels,
        schedules=schedules,
        workers=workers,
        bindings=bindings,
        control=control,
    )


def _broadcast_tables(prefix: str, md: MetaData) -> tuple[Table, Table]:
    """Schema step 5: shared exchange bindings and control messages (``broadcast.py``)."""
    bindings = Table(
        f"{prefix}bindings",
        md,
        Column("exchange", String(255), primary_key=True),
        Column("routing_key", String(255), primary_key=True),
        Column("queue", String(255), primary_key=True),
        Column("pattern", Text, nullable=True),  # a topic binding's regex (kombu's)
        Column("control", Boolean, nullable=False),  # the queue's messages are control messages
        Column("message_ttl", Float, nullable=True),  # seconds: the queue's x-message-ttl
        # NULL: permanent (a durable queue); else the binding goes unless its consumer renews it.
        Column("expires_at", DateTime(timezone=True), nullable=True),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )
    control = Table(
        f"{prefix}control_messages",
        md,
        Column("id", _id_type(), primary_key=True, autoincrement=True),
        Column("queue", String(255), nullable=False),
        Column("payload", Text, nullable=False),  # the whole kombu message, JSON
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=True),
    )
    # Short names: Postgres cuts identifiers at 63 characters, and a prefix may have 40.
    Index(f"{prefix}ctl_queue_idx", control.c.queue, control.c.id)
    Index(f"{prefix}ctl_expires_idx", control.c.expires_at)
    return bindings, control


# --- Postgres extras -----------------------------------------------------------------------


def _pg_notify_ddl(t: Tables) -> list[str]:
    """A trigger that NOTIFYs ``<prefix>jobs`` with the queue name whenever a row becomes queued.

    In the database, not in the producer, so every path that makes a job ready (enqueue,
    requeue, an expired lease, a future ``jobs retry``) wakes idle workers.
    """
    fn = f"{t.prefix}jobs_notify"
    return [
        f"""CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_NAME, NEW.queue);
    RETURN NULL;
END
$$ LANGUAGE plpgsql""",
        f"DROP TRIGGER IF EXISTS {fn}_trg ON {t.jobs.name}",
        f"""CREATE TRIGGER {fn}_trg AFTER INSERT OR UPDATE OF status ON {t.jobs.name}
FOR EACH ROW WHEN (NEW.status = '{QUEUED}') EXECUTE FUNCTION {fn}()""",
    ]


def _pg_control_notify_ddl(t: Tables) -> list[str]:
    """A trigger that NOTIFYs ``<prefix>control_messages`` with the queue name of each new
    control message, so its consumer (a worker's pidbox, ``celery inspect`` waiting for a
    reply, Flower) wakes at once."""
    fn = f"{t.prefix}control_notify"
    return [
        f"""CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_NAME, NEW.queue);
    RETURN NULL;
END
$$ LANGUAGE plpgsql""",
        f"DROP TRIGGER IF EXISTS {fn}_trg ON {t.control.name}",
        f"""CREATE TRIGGER {fn}_trg AFTER INSERT ON {t.control.name}
FOR EACH ROW EXECUTE FUNCTION {fn}()""",
    ]


def _pg_drop_ddl(t: Tables) -> list[str]:
    return [
        f"DROP TABLE IF EXISTS {t.jobs.name}",
        f"DROP TABLE IF EXISTS {t.version.name}",
        f"DROP TABLE IF EXISTS {t.cancels.name}",
        f"DROP TABLE IF EXISTS {t.schedules.name}",
        f"DROP TABLE IF EXISTS {t.workers.name}",
        f"DROP TABLE IF EXISTS {t.bindings.name}",
        f"DROP TABLE IF EXISTS {t.control.name}",
        f"DROP FUNCTION IF EXISTS {t.prefix}jobs_notify()",
        f"DROP FUNCTION IF EXISTS {t.prefix}control_notify()",
    ]


def _lock_key(t: Tables) -> int:
    return zlib.crc32(f"unified_jobs schema {t.prefix}".encode())


# --- versioned steps -----------------------------------------------------------------------


def _v1(conn: Connection, t: Tables) -> None:
    t.metadata.create_all(conn, tables=[t.jobs, t.version], checkfirst=True)
    if conn.dialect.name == "postgresql":
        for ddl in _pg_notify_ddl(t):
            conn.exec_driver_sql(ddl)


def _v2(conn: Connection, t: Tables) -> None:
    """Cancel requests for running jobs."""
    t.metadata.create_all(conn, tables=[t.cancels], checkfirst=True)


def _v3(conn: Connection, t: Tables) -> None:
    """Unique jobs (a key column, its expiry, a partial unique index) and recurring jobs'
    schedules."""
    _add_columns(conn, t, ("unique_key", "unique_until"))
    for index in t.jobs.indexes:
        if index.name == f"{t.prefix}jobs_unique_idx":
            index.create(conn, checkfirst=True)
    t.metadata.create_all(conn, tables=[t.schedules], checkfirst=True)


def _v4(conn: Connection, t: Tables) -> None:
    """Worker heartbeats."""
    t.metadata.create_all(conn, tables=[t.workers], checkfirst=True)


def _v5(conn: Connection, t: Tables) -> None:
    """Remote control: shared exchange bindings and control messages (``broadcast.py``)."""
    t.metadata.create_all(conn, tables=[t.bindings, t.control], checkfirst=True)
    if conn.dialect.name == "postgresql":
        for ddl in _pg_control_notify_ddl(t):
            conn.exec_driver_sql(ddl)


def _v6(conn: Connection, t: Tables) -> None:
    """The dashboard's index: jobs by status, newest change first."""
    for index in t.jobs.indexes:
        if index.name == f"{t.prefix}jobs_status_updated_idx":
            index.create(conn, checkfirst=True)


def _v7(conn: Connection, t: Tables) -> None:
    """A job's result and its error's class (``JobInfo.result``, ``JobInfo.error_class``)."""
    _add_columns(conn, t, ("result_json", "error_class"))


def _add_columns(conn: Connection, t: Tables, names: tuple[str, ...]) -> None:
    """Add these columns of the jobs table where missing (a table made by step 1 of a later
    version has them already). Nullable, without a default: no row is rewritten."""
    have = {column["name"] for column in inspect(conn).get_columns(t.jobs.name)}
    for name in names:
        if name not in have:
            kind = t.jobs.c[name].type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {t.jobs.name} ADD COLUMN {name} {kind}")


_MIGRATIONS: dict[int, Callable[[Connection, Tables], None]] = {
    1: _v1,
    2: _v2,
    3: _v3,
    4: _v4,
    5: _v5,
    6: _v6,
    7: _v7,
}

_done: set[tuple[str, str]] = set()
_done_lock = threading.Lock()


def _reset_lock_in_child() -> None:
    global _done_lock
    _done_lock = threading.Lock()  # a parent thread may have held it at fork time


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_in_child)


def _current_version(conn: Connection, t: Tables) -> int:
    """The schema version the tables are at: 0 without a version table, and 0 too when the
    jobs table is missing although the version table says otherwise (dropped by hand: the
    steps then run again, each of them idempotent)."""
    tables = inspect(conn)
    if not tables.has_table(t.version.name) or not tables.has_table(t.jobs.name):
        return 0
    return int(conn.execute(select(func.coalesce(func.max(t.version.c.version), 0))).scalar_one())


def ensure_schema_on(engine: Engine, t: Tables) -> int:
    """Create or migrate the schema if needed; idempotent and safe from many processes at once.

    Returns the schema version now in the database. The check is cached per process.
    """
    key = (engine.url.render_as_string(hide_password=True), t.prefix)
    if key in _done:
        return SCHEMA_VERSION
    with _done_lock:
        if key in _done:
            return SCHEMA_VERSION
        # Fast path, no lock: already at our version.
        with engine.connect() as conn:
            version = _current_version(conn, t)
            conn.rollback()
        if version < SCHEMA_VERSION:
            version = _migrate(engine, t)
        elif version > SCHEMA_VERSION:
            logger.warning(
                "table %s is at schema version %d, newer than this unified_jobs (%d); upgrade unified_jobs",
                t.version.name,
                version,
                SCHEMA_VERSION,
            )
        _done.add(key)
        return version


def _migrate(engine: Engine, t: Tables) -> int:
    # One transaction: on Postgres DDL is transactional and an advisory lock serialises
    # concurrent first starts; on SQLite the transaction is BEGIN IMMEDIATE (see engine.py).
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(t)})
        version = _current_version(conn, t)
        if version == 0 and inspect(conn).has_table(t.version.name):
            stale = conn.execute(select(func.count()).select_from(t.version)).scalar_one()
            if stale:
                logger.warning(
                    "table %s lists %d schema steps but %s is missing; creating the schema again",
                    t.version.name,
                    stale,
                    t.jobs.name,
                )
                conn.execute(t.version.delete())
        for step in range(version + 1, SCHEMA_VERSION + 1):
            logger.info("applying unified_jobs SQL schema step %d to %s", step, t.jobs.name)
            _MIGRATIONS[step](conn, t)
            conn.execute(insert(t.version).values(version=step, applied_at=func.now()))
        return max(version, SCHEMA_VERSION)


def drop_schema(engine: Engine, t: Tables) -> None:
    """Drop the tables (and the Postgres trigger function). Destroys every job; for tests."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            for ddl in _pg_drop_ddl(t):
                conn.exec_driver_sql(ddl)
        else:
            t.metadata.drop_all(conn, checkfirst=True)
    key = (engine.url.render_as_string(hide_password=True), t.prefix)
    with _done_lock:
        _done.discard(key)
