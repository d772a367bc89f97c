"""The Postgres and SQLite kinds: the project's SQL transport, whose job rows are the store.

The transport writes a job's whole life into its row (claim, ack, fail, lease expiry), so
the ``record_*`` hooks do nothing here. A retried job is a new row with the same task id
(Celery's own retry publishes one); the superseded row is deleted, so the newest row of a
task id is the job.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy.engine import Row

from unified_jobs._uri import mask_uri
from unified_jobs.adapters.celery.kinds import Check, QueueKind
from unified_jobs.adapters.sql import queries
from unified_jobs.adapters.sql.store import JobStore as SqlTable
from unified_jobs.core.job import JobInfo, JobStatus, aware, utcnow
from unified_jobs.core.store import JobStore
from unified_jobs.errors import ConfigError

__all__ = ["ERROR_HEADER", "SqlJobStore", "SqlKind", "split_error"]

#: Cancel requests older than this are deleted (their job had ended before a worker saw them).
STALE_CANCEL_REQUEST = timedelta(hours=1)

#: The header a retry's message carries the failed attempt's error in (for ``jobs.job()``).
ERROR_HEADER = "unified_jobs_error"


def split_error(text: str | None) -> tuple[str | None, str | None]:
    """A row's ``last_error`` as (the error line, its traceback)."""
    if not text:
        return None, None
    head, sep, trace = text.partition("\n\n")
    return head, (trace if sep else None)


class SqlJobStore(JobStore):
    def __init__(self, url: str, table_prefix: str) -> None:
        self.table = SqlTable(url, table_prefix)
        self.q = queries.one_job_queries_for(self.table.tables)

    def _one(self, stmt: Any, params: dict[str, Any]) -> Row[Any] | None:
        with self.table._ready().begin() as conn:
            return conn.execute(stmt, params).first()

    def _change(self, stmt: Any, params: dict[str, Any]) -> int:
        with self.table._ready().begin() as conn:
            return int(conn.execute(stmt, params).rowcount)

    def get(self, job_id: str) -> JobInfo | None:
        row = self._one(self.q.get, {"job_task_id": job_id})
        return _info(row) if row is not None else None

    def failed(self, worker: str | None = None, limit: int = 100) -> list[JobInfo]:
        with self.table._ready().begin() as conn:
            rows = conn.execute(self.q.failed, {"worker": worker, "limit": limit}).all()
        return [_info(r) for r in rows]

    def discard(self, job_id: str) -> bool:
        return self._change(self.q.discard, {"job_task_id": job_id}) > 0

    def cancel(self, job_id: str) -> bool:
        return self._change(self.q.cancel, {"job_task_id": job_id, "now": utcnow()}) > 0

    def request_cancel(self, job_id: str) -> bool:
        now = utcnow()
        with self.table._ready().begin() as conn:
            conn.execute(self.q.clear_old_requests, {"older": now - STALE_CANCEL_REQUEST})
            conn.execute(self.q.clear_request, {"job_task_id": job_id})
            made = conn.execute(self.q.request_cancel, {"job_task_id": job_id, "now": now}).first()
        return made is not None

    def cancel_requested(self, job_ids: Iterable[str]) -> set[str]:
        ids = list(job_ids)
        if not ids:
            return set()
        with self.table._ready().begin() as conn:
            found = {str(t) for t in conn.execute(self.q.cancel_requested, {"ids": ids}).scalars()}
            for task_id in found:
                conn.execute(self.q.clear_request, {"job_task_id": task_id})
        return found


def _info(row: Row[Any]) -> JobInfo:
    try:
        message = json.loads(row.payload)
        headers = message.get("headers") or {}
        body = json.loads(_body(message))
        args: Any = body[1] if isinstance(body, list) and len(body) > 1 and not body[0] else body
    except (ValueError, TypeError, KeyError, IndexError):
        headers, args = {}, None
    retries = int(headers.get("retries") or 0)
    status = str(row.status)
    run_at = aware(row.run_at)
    last_error, trace = split_error(row.last_error)
    if status == "queued" and retries and headers.get(ERROR_HEADER):
        status, last_error = "retrying", last_error or str(headers[ERROR_HEADER])
    elif status == "queued" and run_at > utcnow():
        status = "scheduled"
    attempts = retries + (1 if status in ("processing", "completed", "failed") else 0)
    updated = aware(row.updated_at)
    finished: datetime | None = updated if status in ("completed", "failed", "cancelled") else None
    return JobInfo(
        id=str(row.task_id),
        worker=str(row.task_name or ""),
        queue=str(row.queue),
        args=args,
        status=cast(JobStatus, status),
        attempts=attempts,
        last_error=last_error,
        traceback=trace,
        enqueued_at=aware(row.created_at),
        run_at=run_at,
        started_at=updated if status == "processing" else None,
        finished_at=finished,
        priority=int(row.priority),
    )


def _body(message: dict[str, Any]) -> str:
    import base64

    body = message.get("body") or ""
    if (message.get("properties") or {}).get("body_encoding") == "base64":
        return base64.b64decode(body).decode("utf-8")
    return str(body)


class SqlKind(QueueKind):
    cancel_running = True
    unique_in_transport = True

    def broker_settings(self) -> dict[str, Any]:
        from unified_jobs.adapters import sql

        queue = self.queue
        return {
            "broker_url": sql.broker_url(queue.kind, queue.uri),
            "broker_transport_options": sql.transport_options(
                lease_sec=queue.lease_sec,
                poll_interval_sec=queue.poll_interval_sec,
                table_prefix=queue.table_prefix,
                on_ack=queue.on_ack,
                # A job whose worker died on each of its claims is failed at lease expiry.
                max_attempts=self.workers.max_deliveries,
            ),
        }

    def worker_defaults(self) -> dict[str, Any]:
        # The SQL transport has no event loop hook, so Celery's pool notices a dead process on
        # its own supervisor thread, which waits worker_lost_wait (10 s) for a result that the
        # process might still have sent; on a local pipe 1 s is plenty. A job whose process
        # died then runs again within about a second, as on Redis, instead of 10 s.
        return {"worker_lost_wait": 1.0}

    def make_store(self) -> JobStore:
        return SqlJobStore(self.queue.uri, self.queue.table_prefix)

    def lost_deliveries(self, task_id: str, delivery_tag: Any) -> int:
        # The transport's delivery tag is "<row id>.<claims so far>".
        try:
            return int(str(delivery_tag).rsplit(".", 1)[1])
        except (IndexError, ValueError):
            return 1

    def transaction_connection(self, transaction: Any) -> Any:
        from unified_jobs.adapters.transactions import connection_of

        conn = connection_of(transaction)
        return conn if _same_database(conn.engine.url, self.queue.uri) else None

    def job_table(self) -> SqlTable:
        return SqlTable(self.queue.uri, self.queue.table_prefix)

    def health(self, *, fix: bool, timeout: float) -> list[Check]:
        from sqlalchemy import inspect, select
        from sqlalchemy.engine import make_url

        from unified_jobs.adapters.sql import SCHEMA_VERSION, broker_url
        from unified_jobs.adapters.sql.engine import get_engine, normalize_db_url
        from unified_jobs.adapters.sql.schema import ensure_schema_on, tables_for

        queue = self.queue
        where = f"{queue.kind} at {mask_uri(queue.uri)}"
        try:
            broker_url(queue.kind, queue.uri)  # checks that the URI fits the kind
        except ConfigError as exc:
            return [("fail", "queue", str(exc))]
        url = make_url(normalize_db_url(queue.uri))
        if queue.kind == "Postgres":
            if "connect_timeout" not in url.query:  # libpq's own parameter; 2 s is its minimum
                url = url.update_query_dict({"connect_timeout": str(max(2, math.ceil(timeout)))})
        else:
            database = url.database or ""
            if not fix and not Path(database).is_file():
                return [_sqlite_file_to_come(where, Path(database))]
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        tables = tables_for(queue.table_prefix)
        try:
            engine = get_engine(url.render_as_string(hide_password=False))
            with engine.connect() as conn:
                has_jobs = inspect(conn).has_table(tables.jobs.name)
                version = 0
                if inspect(conn).has_table(tables.version.name):
                    versions = conn.execute(select(tables.version.c.version)).scalars().all()
                    version = max(versions, default=0)
                conn.rollback()
        except Exception as exc:
            reason = str(getattr(exc, "orig", None) or exc)
            return [("fail", "queue", f"cannot connect to {where}: {reason}")]
        checks: list[Check] = [("ok", "queue", f"connected to {where}")]
        name = tables.jobs.name
        if has_jobs and version == SCHEMA_VERSION:
            return [*checks, ("ok", "schema", f"table {name} is at schema version {version}")]
        if version > SCHEMA_VERSION:
            why = f"newer than this unified_jobs ({SCHEMA_VERSION}); upgrade unified_jobs"
            return [*checks, ("fail", "schema", f"table {name} is at schema version {version}, {why}")]
        state = "missing" if not has_jobs else f"at schema version {version}, not {SCHEMA_VERSION}"
        if not fix:
            return [
                *checks,
                (
                    "fail",
                    "schema",
                    f"table {name} is {state}; run `unified-jobs doctor --fix` to create it "
                    "(a worker also does on start, if its database user may create tables)",
                ),
            ]
        try:
            version = ensure_schema_on(engine, tables)
        except Exception as exc:
            cause = getattr(exc, "orig", None) or exc
            return [*checks, ("fail", "schema", f"could not create table {name}: {cause}")]
        return [*checks, ("ok", "schema", f"table {name} was {state}; created it (schema version {version})")]

    def make_schedule_state(self) -> Any:  # a ScheduleState (annotated so in QueueKind)
        from unified_jobs.adapters.sql.schedules import SqlScheduleState

        return SqlScheduleState(self.queue.uri, self.queue.table_prefix)


def _same_database(url: Any, queue_uri: str) -> bool:
    """Whether a connection to ``url`` reaches the queue's database: the same SQLite file, or
    the same Postgres host, port and database name (as written in the two URIs)."""
    from sqlalchemy.engine import make_url

    from unified_jobs.adapters.sql.engine import normalize_db_url

    ours = make_url(normalize_db_url(queue_uri))
    backend = url.get_backend_name()
    if backend != ours.get_backend_name():
        return False
    if backend == "sqlite":
        theirs, mine = url.database or "", ours.database or ""
        if theirs in ("", ":memory:") or mine in ("", ":memory:"):
            return False
        return os.path.realpath(theirs) == os.path.realpath(mine)
    return bool(
        (url.host or "localhost", url.port or 5432, url.database)
        == (ours.host or "localhost", ours.port or 5432, ours.database)
    )


def _sqlite_file_to_come(where: str, database: Path) -> Check:
    """A SQLite queue whose file does not exist yet: fine if it can be created there."""
    folder = database.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return ("fail", "queue", f"{where}: the SQLite file {database} cannot be created: {folder} is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        why = f"{folder} is not writable"
        return ("fail", "queue", f"{where}: the SQLite file {database} cannot be created: {why}")
    return (
        "ok",
        "queue",
        f"{where}: the SQLite file {database} does not exist yet; it is created with the queue's tables "
        "on first use (or now, with `unified-jobs doctor --fix`)",
    )
