"""Direct access to the jobs table, for ``doctor`` and the ``jobs`` command line.

``JobStore`` is the job store of one SQL queue (a database URL and a table prefix): counts,
listings, and the bulk changes of ``unified-jobs jobs``. Dumps and imports are in
``store_dump.py``. The SQL is in ``queries.py``. Times are UTC from this process' clock, as
the transport writes them.

The dashboard's reads (``monitor_rows``) run, on SQLite, on connections of their own, whose
transactions are SQLite's deferred ones: the queue's engine opens every transaction with
``BEGIN IMMEDIATE``, which takes the database's write lock, and a read of a large table would
hold the workers' claims up for as long (in WAL mode a deferred read blocks no writer).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import Row

from unified_jobs.adapters.sql import monitor_queries, queries
from unified_jobs.adapters.sql.engine import dialect_of, get_engine, guard_forks, normalize_db_url
from unified_jobs.adapters.sql.options import TRANSPORT_SCHEME
from unified_jobs.adapters.sql.schema import (
    CANCELLED,
    COMPLETED,
    DEFAULT_TABLE_PREFIX,
    STATUSES,
    Tables,
    ensure_schema_on,
    tables_for,
)

__all__ = ["JobCounts", "JobRow", "JobStore", "ensure_schema", "job_counts", "utcnow"]

#: Rows per transaction in the bulk operations (pages of a dump, deletes of a purge).
PAGE_SIZE = 500

#: Called with the number of rows just handled, for a progress bar.
Progress = Callable[[int], None]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(value: datetime) -> datetime:
    """A datetime read from the table, as UTC: SQLite hands them back naive."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _db_url(url: str) -> str:
    prefix = TRANSPORT_SCHEME + "+"
    return url[len(prefix) :] if url.startswith(prefix) else url


def ensure_schema(url: str, table_prefix: str = DEFAULT_TABLE_PREFIX) -> int:
    """Create or migrate the queue's tables at ``url``; idempotent. Returns the schema version.

    ``url`` is a plain ``postgresql://``/``sqlite:///`` URI or a ``ujsql+...`` broker URL.
    """
    db = _db_url(url)
    dialect_of(db)
    return ensure_schema_on(get_engine(db), tables_for(table_prefix))


def job_counts(url: str, table_prefix: str = DEFAULT_TABLE_PREFIX) -> dict[str, dict[str, int]]:
    """``{queue: {status: number of jobs}}`` for every queue with at least one row."""
    return JobStore(url, table_prefix).counts().by_queue


@dataclass
class JobCounts:
    """Jobs by queue and status; ``delayed`` counts the queued ones whose ``run_at`` is ahead."""

    by_queue: dict[str, dict[str, int]] = field(default_factory=dict)
    delayed: dict[str, int] = field(default_factory=dict)

    def total(self, status: str) -> int:
        return sum(counts.get(status, 0) for counts in self.by_queue.values())


@dataclass(frozen=True)
class JobRow:
    """One job as ``jobs list --jobs`` shows it (times are aware, UTC)."""

    id: int
    queue: str
    worker: str | None
    task_id: str | None
    status: str
    priority: int
    run_at: datetime
    attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> JobRow:
        return cls(
            id=int(row.id),
            queue=row.queue,
            worker=row.task_name,
            task_id=row.task_id,
            status=row.status,
            priority=int(row.priority),
            run_at=aware(row.run_at),
            attempts=int(row.attempts),
            last_error=row.last_error,
            created_at=aware(row.created_at),
            updated_at=aware(row.updated_at),
        )


_read_engines: dict[str, Engine] = {}
_read_engines_lock = threading.Lock()


def read_engine(url: str) -> Engine:
    """The process' engine for the dashboard's reads of the SQLite database at ``url``: plain
    deferred transactions (see the module's docstring), a busy timeout, and ``BODY_FUNCTION``."""
    engine = _read_engines.get(url)
    if engine is not None:
        return engine
    with _read_engines_lock:
        engine = _read_engines.get(url)
        if engine is None:
            engine = create_engine(
                normalize_db_url(url), connect_args={"timeout": 10.0, "check_same_thread": False}
            )
            guard_forks(engine, _on_read_connect)
            _read_engines[url] = engine
        return engine


def _on_read_connect(dbapi_conn: Any) -> None:
    dbapi_conn.create_function(monitor_queries.BODY_FUNCTION, 1, body_text, deterministic=True)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout = 10000")
    cur.execute("PRAGMA query_only = 1")
    cur.close()


def body_text(payload: str | None) -> str | None:
    """The body of the kombu message a row's payload holds, as text (base64 decoded).

    Called once per row a text search looks at, so the common shape is read without parsing
    the whole payload: the transport writes it with ``json.dumps``, body first, base64; a
    base64 body holds no quote, and the exact ``"body": "`` cannot occur inside a JSON string.
    """
    if payload is None:
        return None
    start = payload.find('"body": "')
    if start >= 0 and '"body_encoding": "base64"' in payload:
        start += 9
        end = payload.find('"', start)
        try:
            return base64.b64decode(payload[start:end]).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            pass
    try:
        message = json.loads(payload)
        body = message.get("body") or ""
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            return base64.b64decode(body).decode("utf-8", "replace")
        return str(body)
    except (ValueError, TypeError, AttributeError, binascii.Error):
        return payload


def _dispose_read_engines_in_child() -> None:
    # As engine.py does for the queue's engines: the parent's connections are left alone.
    global _read_engines_lock
    _read_engines_lock = threading.Lock()
    for engine in list(_read_engines.values()):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_dispose_read_engines_in_child)


def check_statuses(statuses: Sequence[str] | None) -> list[str]:
    """``statuses`` (all when empty or ``None``), each checked against ``STATUSES``."""
    if not statuses:
        return list(STATUSES)
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise ValueError(f"unknown job status {', '.join(unknown)}; the statuses are {', '.join(STATUSES)}")
    return list(dict.fromkeys(statuses))


class JobStore:
    """The jobs table of one SQL queue: ``url`` (plain or ``ujsql+``) and ``table_prefix``.

    The tables are created on first use if missing. Every method runs short transactions:
    on SQLite each one holds the database's write lock, so workers wait only briefly.
    """

    def __init__(self, url: str, table_prefix: str = DEFAULT_TABLE_PREFIX) -> None:
        db = _db_url(url)
        self.dialect = dialect_of(db)
        self.engine: Engine = get_engine(db)
        self.tables: Tables = tables_for(table_prefix)
        self.admin = queries.admin_queries_for(self.tables)
        self._schema_checked = False

    def _ready(self) -> Engine:
        if not self._schema_checked:
            ensure_schema_on(self.engine, self.tables)
            self._schema_checked = True
        return self.engine

    def monitor_rows(self, stmt: Any, params: dict[str, Any]) -> list[Any]:
        """The rows (``Row`` objects) of one of the dashboard's reads (``monitor_queries``)."""
        engine = self._ready()
        if self.dialect == "sqlite":
            engine = read_engine(engine.url.render_as_string(hide_password=False))
        with engine.connect() as conn:
            return list(conn.execute(stmt, params).all())

    @staticmethod
    def _filters(statuses: Sequence[str] | None, worker: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"statuses": check_statuses(statuses)}
        if worker is not None:
            params["worker"] = worker
        return params

    # --- reading ------------------------------------------------------------------------

    def counts(
        self, statuses: Sequence[str] | None = None, worker: str | None = None, now: datetime | None = None
    ) -> JobCounts:
        """Jobs by queue and status (only queues with matching jobs), and the delayed ones."""
        params = {**self._filters(statuses, worker), "now": now or utcnow()}
        out = JobCounts()
        with self._ready().begin() as conn:
            for queue, status, n, delayed in conn.execute(
                queries.count_jobs(self.tables, worker is not None), params
            ):
                out.by_queue.setdefault(queue, {})[status] = int(n)
                if int(delayed or 0):
                    out.delayed[queue] = out.delayed.get(queue, 0) + int(delayed)
        return out

    def status(self, task_id: str) -> str | None:
        """The status of the job with this id (the Celery task id), or ``None`` if unknown."""
        with self._ready().begin() as conn:
            value = conn.execute(self.admin.status_of, {"task_id": task_id}).scalar()
        return None if value is None else str(value)

    def recent(
        self, statuses: Sequence[str] | None = None, worker: str | None = None, limit: int = 50
    ) -> list[JobRow]:
        """The newest ``limit`` matching jobs, newest first."""
        params = {**self._filters(statuses, worker), "limit": limit}
        with self._ready().begin() as conn:
            rows = conn.execute(queries.recent_jobs(self.tables, worker is not None), params).all()
        return [JobRow.from_row(row) for row in rows]

    def count_matching(
        self,
        statuses: Sequence[str] | None = None,
        worker: str | None = None,
        older_than: datetime | None = None,
    ) -> int:
        """How many jobs ``pages`` with these filters yields (for a progress bar)."""
        params = self._filters(statuses, worker)
        if older_than is not None:
            params["cutoff"] = older_than
        stmt = queries.count_filtered(self.tables, worker is not None, older_than is not None)
        with self._ready().begin() as conn:
            return int(conn.execute(stmt, params).scalar_one())

    def pages(
        self,
        statuses: Sequence[str] | None = None,
        worker: str | None = None,
        older_than: datetime | None = None,
        *,
        payload: bool = True,
    ) -> Iterator[list[Row[Any]]]:
        """The matching jobs by id, a page (one short transaction) at a time.

        ``older_than``: only jobs last updated at or before it. ``payload=False`` reads ids only.
        """
        stmt = queries.job_page(self.tables, worker is not None, older_than is not None, payload)
        params = {**self._filters(statuses, worker), "limit": PAGE_SIZE, "after_id": 0}
        if older_than is not None:
            params["cutoff"] = older_than
        while True:
            with self._ready().begin() as conn:
                rows = list(conn.execute(stmt, params).all())
            if not rows:
                return
            yield rows
            params["after_id"] = rows[-1].id

    # --- changing -----------------------------------------------------------------------

    def _run(self, stmt: Any, params: dict[str, Any]) -> int:
        with self._ready().begin() as conn:
            return int(conn.execute(stmt, params).rowcount)

    def cancel(self, worker: str) -> int:
        """Queued jobs of ``worker`` become cancelled; returns how many."""
        return self._run(self.admin.cancel, {"worker": worker, "now": utcnow()})

    def requeue_stuck(self, older_than: timedelta) -> int:
        """Jobs in ``processing`` for at least ``older_than`` (by ``updated_at``, which a claim
        sets) go back to ``queued``, unless their lease is still being renewed: a live worker
        is running those. Returns how many."""
        now = utcnow()
        minutes = older_than.total_seconds() / 60
        error = (
            f"requeued by `unified-jobs jobs requeue` after {minutes:g} min or more in processing; owner was "
        )
        return self._run(self.admin.requeue_stuck, {"now": now, "cutoff": now - older_than, "error": error})

    def retry(self, worker: str | None = None) -> int:
        """Failed jobs (of ``worker``, or all) go back to ``queued`` with a fresh attempts count."""
        params: dict[str, Any] = {"now": utcnow()}
        if worker is not None:
            params["worker"] = worker
        return self._run(queries.retry_failed(self.tables, worker is not None), params)

    def tidy(self) -> int:
        """Delete the completed and cancelled jobs; returns how many."""
        return self._run(self.admin.delete_statuses, {"statuses": [COMPLETED, CANCELLED]})

    def delete_ids(
        self,
        ids: Sequence[int],
        statuses: Sequence[str],
        older_than: datetime | None,
        progress: Progress | None = None,
    ) -> int:
        """Delete these jobs, in pages, if they still match the filters; returns how many."""
        stmt = queries.delete_jobs(self.tables, older_than is not None)
        params: dict[str, Any] = {"statuses": check_statuses(statuses)}
        if older_than is not None:
            params["cutoff"] = older_than
        deleted = 0
        for start in range(0, len(ids), PAGE_SIZE):
            chunk = list(ids[start : start + PAGE_SIZE])
            deleted += self._run(stmt, {**params, "ids": chunk})
            if progress is not None:
                progress(len(chunk))
        return deleted

    def insert_jobs(self, jobs: list[dict[str, Any]], progress: Progress | None = None) -> int:
        """Insert queued jobs in one transaction (``AdminQueries.insert_imported`` parameters)."""
        with self._ready().begin() as conn:
            conn.execute(self.admin.insert_imported, jobs)
        if progress is not None:
            progress(len(jobs))
        return len(jobs)
