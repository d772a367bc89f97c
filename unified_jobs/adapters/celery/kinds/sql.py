"""The Postgres and SQLite kinds: the project's SQL transport, whose job rows are the store.

The transport writes a job's whole life into its row (claim, ack, fail, lease expiry), so
the ``record_*`` hooks do nothing here. A retried job is a new row with the same task id
(Celery's own retry publishes one); the superseded row is deleted, so the newest row of a
task id is the job.

What a Worker's job returned is known only where it ran: a worker's pool process (Celery's
main process, which acks, is handed only its repr). ``record_result`` hands it to the
consuming channel when that is in the same process (a threads or solo pool), so the ack's
UPDATE writes it; a prefork pool's child writes it to the row itself, one UPDATE before the
ack. A job that returns ``None`` costs nothing either way.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

from celery import signals
from sqlalchemy.engine import Row
from sqlalchemy.exc import SQLAlchemyError

from unified_jobs._uri import mask_uri
from unified_jobs.adapters.celery.kinds import Check, QueueKind
from unified_jobs.adapters.sql import monitor_queries, queries
from unified_jobs.adapters.sql.heartbeats import SqlHeartbeats
from unified_jobs.adapters.sql.leases import claim_of, note_result_here
from unified_jobs.adapters.sql.schema import COMPLETED
from unified_jobs.adapters.sql.store import JobStore as SqlTable
from unified_jobs.core.job import Job, JobInfo, JobStatus, aware, utcnow
from unified_jobs.core.monitor import SEARCH_LIMIT, JobPage, JobQuery, QueueStats, ThroughputBucket
from unified_jobs.core.outcome import result_json
from unified_jobs.core.store import JobStore
from unified_jobs.errors import ConfigError

__all__ = ["ERROR_CLASS_HEADER", "ERROR_HEADER", "SqlJobStore", "SqlKind", "like_pattern", "split_error"]

logger = logging.getLogger(__name__)

#: Cancel requests older than this are deleted (their job had ended before a worker saw them).
STALE_CANCEL_REQUEST = timedelta(hours=1)

#: The header a retry's message carries the failed attempt's error in (for ``jobs.job()``).
ERROR_HEADER = "unified_jobs_error"
#: The header a retry's message carries the failed attempt's error class path in.
ERROR_CLASS_HEADER = "unified_jobs_error_class"
#: A LIKE pattern (escape ``\\``) of the payloads that carry it: how SQL tells a retry's row.
RETRY_MARK = '%"' + ERROR_HEADER.replace("_", "\\_") + '":%'


def _stop_waiting(**_: Any) -> None:
    from unified_jobs.adapters.sql.transport import stop_waiting

    stop_waiting()


# A warm shutdown (SIGTERM) begins at once, not after the idle consumer's 2 s wait for jobs.
signals.worker_shutting_down.connect(_stop_waiting, weak=False)


def split_error(text: str | None) -> tuple[str | None, str | None]:
    """A row's ``last_error`` as (the error line, its traceback)."""
    if not text:
        return None, None
    head, sep, trace = text.partition("\n\n")
    return head, (trace if sep else None)


class SqlJobStore(SqlHeartbeats, JobStore):
    """``on_ack``: the queue's (``delete``: a completed job's row is deleted, so no result is
    written)."""

    can_run_now = True

    def __init__(self, url: str, table_prefix: str, on_ack: str = "complete") -> None:
        self.table = SqlTable(url, table_prefix)
        self.q = queries.one_job_queries_for(self.table.tables)
        self.on_ack = on_ack

    def record_result(self, delivery_tag: object, job_id: str, value: Any) -> None:
        """A job delivered under ``delivery_tag`` (the transport's ``"<row id>.<claims>"``)
        returned ``value`` (not None) in this worker process: have its row keep it (see the
        module's docstring). Never raises: the job has completed, whatever becomes of this."""
        claim = claim_of(delivery_tag)
        if self.on_ack != "complete" or claim is None:
            return
        text = result_json(value, job_id)
        if text is None:
            return
        table = self.table
        transport_queries = queries.queries_for(table.tables, table.dialect)
        if note_result_here(table.engine, transport_queries, str(delivery_tag), text):
            return
        params = {"job_id": claim.id, "claim_attempts": claim.attempts, "result": text}
        try:
            self._change(transport_queries.keep_result, params)
        except SQLAlchemyError:
            logger.warning("could not keep the result of job %s in its row", job_id, exc_info=True)

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

    def run_now(self, job_id: str) -> bool:
        """The row's run_at becomes now and its message loses its ``eta`` (else the worker
        that claims it would hold it until then)."""
        row = self._one(self.q.get, {"job_task_id": job_id})
        now = utcnow()
        if row is None or _info(row).status not in ("scheduled", "retrying") or aware(row.run_at) <= now:
            return False
        try:
            message = json.loads(row.payload)
            message["headers"] = {**(message.get("headers") or {}), "eta": None}
        except (ValueError, TypeError, AttributeError):
            return False  # not a message a worker could run either
        params = {"row_id": row.id, "payload": json.dumps(message), "now": now}
        return self._change(self.q.run_now, params) > 0

    # -- what the dashboard reads (the SQL: adapters/sql/monitor_queries.py) -------------

    def jobs(self, query: JobQuery) -> JobPage:
        t = self.table
        worker, queue, search = query.worker is not None, query.queue is not None, bool(query.text)
        params: dict[str, Any] = {
            "now": utcnow(),
            "retry_mark": RETRY_MARK,
            "limit": query.limit + 1,
            "offset": query.offset,
            "n": SEARCH_LIMIT if search else query.offset + query.limit + 1,
            "worker": query.worker,
            "queue": query.queue,
        }
        if search:
            params["pattern"] = like_pattern(query.text or "")
        stmt = monitor_queries.page(t.tables, t.dialect, query.status, worker, queue, search)
        infos = [_info(row) for row in t.monitor_rows(stmt, params)]
        more = len(infos) > query.limit
        infos = infos[: query.limit]
        if query.status is not None:  # the SQL's test of a retry's row is loose; _info decides
            infos = [info for info in infos if info.status == query.status]
        searched = None
        if search and not more:
            count = monitor_queries.candidates_count(t.tables, query.status, worker, queue)
            (n,) = t.monitor_rows(count, {**params, "n": SEARCH_LIMIT + 1})[0]
            if n > SEARCH_LIMIT:
                searched = SEARCH_LIMIT
        return JobPage(jobs=infos, more=more, searched=searched)

    def status_counts(self) -> dict[str, int]:
        t = self.table
        counts = {str(s): int(n) for s, n in t.monitor_rows(monitor_queries.counts_by_status(t.tables), {})}
        queued = counts.pop("queued", 0)
        if queued:
            params = {"now": utcnow(), "retry_mark": RETRY_MARK}
            ((retrying, scheduled),) = t.monitor_rows(monitor_queries.queued_split(t.tables), params)
            split = {"retrying": int(retrying), "scheduled": int(scheduled)}
            split["queued"] = queued - split["retrying"] - split["scheduled"]
            counts.update({status: n for status, n in split.items() if n > 0})
        return counts

    def queue_stats(self) -> list[QueueStats]:
        """The queues with a job waiting, running or failed, and those a live worker consumes
        (a queue whose jobs all ended long ago is found by no index: listing it would cost a
        scan of the whole history)."""
        t = self.table
        params = {"now": utcnow(), "retry_mark": RETRY_MARK}
        stats: dict[str, dict[str, Any]] = {}

        def of(queue: str) -> dict[str, Any]:
            return stats.setdefault(queue, {"name": queue})

        for queue, queued, scheduled, processing, failed, oldest in t.monitor_rows(
            monitor_queries.queues(t.tables), params
        ):
            entry = of(str(queue))
            entry.update(queued=int(queued or 0), scheduled=int(scheduled or 0))
            entry.update(processing=int(processing or 0), failed=int(failed or 0))
            if oldest is not None:
                entry["oldest_queued_at"] = aware(oldest).astimezone(timezone.utc)
        for name in self._consumed_queues():
            of(name)
        return [QueueStats(**stats[name]) for name in sorted(stats)]

    def _consumed_queues(self) -> set[str]:
        """The queues the live workers' heartbeats say they consume (none if unknown)."""
        try:
            beats = self.workers()
        except Exception:  # no heartbeats kept, or their table is unreadable: the jobs tell
            return set()
        return {queue for beat in beats for queue in beat.queues}

    def throughput(self, minutes: int = 60) -> list[ThroughputBucket]:
        t = self.table
        current = int(utcnow().timestamp() // 60)
        span = range(current - max(1, minutes) + 1, current + 1)
        since = datetime.fromtimestamp(span[0] * 60, timezone.utc)
        counts: dict[int, list[int]] = {minute: [0, 0] for minute in span}
        for start, status, n in t.monitor_rows(
            monitor_queries.throughput(t.tables, t.dialect), {"since": since}
        ):
            if isinstance(start, str):  # SQLite: 'YYYY-MM-DD HH:MM', UTC
                start = datetime.strptime(start, "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc)
            minute = int(aware(start).timestamp() // 60)
            if minute in counts:
                counts[minute][0 if status == COMPLETED else 1] += int(n)
        return [
            ThroughputBucket(datetime.fromtimestamp(minute * 60, timezone.utc), completed, failed)
            for minute, (completed, failed) in counts.items()
        ]


def like_pattern(text: str) -> str:
    """A LIKE pattern (escape ``\\``) for ``text`` anywhere in a message body: non-ASCII
    characters as the JSON of the body writes them (``\\u`` escapes), ``%``, ``_`` and the
    escape character escaped."""
    as_json = "".join(ch if ord(ch) < 128 else json.dumps(ch)[1:-1] for ch in text)
    escaped = as_json.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


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
    error_class = row.error_class
    if status == "queued" and retries and headers.get(ERROR_HEADER):
        status, last_error = "retrying", last_error or str(headers[ERROR_HEADER])
        error_class = error_class or headers.get(ERROR_CLASS_HEADER)
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
        result=_result(row.result_json) if status == "completed" else None,
        error_class=str(error_class) if error_class else None,
    )


def _result(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:  # not written by us
        return None


def _body(message: dict[str, Any]) -> str:
    import base64

    body = message.get("body") or ""
    if (message.get("properties") or {}).get("body_encoding") == "base64":
        return base64.b64decode(body).decode("utf-8")
    return str(body)


class SqlKind(QueueKind):
    cancel_running = True
    unique_in_transport = True
    inserts_batches = True

    @property
    def db_uri(self) -> str:
        """``queue.uri`` with the queue's timeouts as libpq parameters (Postgres; its own
        ``connect_timeout`` or ``tcp_user_timeout`` win): what every engine of the queue opens
        (the transport's, the job store's, the schedule state's, the ``jobs`` commands')."""
        from unified_jobs.adapters.sql.engine import with_timeouts

        queue = self.queue
        return with_timeouts(
            queue.uri, connect_timeout=queue.connect_timeout_sec, read_timeout=queue.read_timeout_sec
        )

    def broker_settings(self) -> dict[str, Any]:
        from unified_jobs.adapters import sql

        queue = self.queue
        return {
            "broker_url": sql.broker_url(queue.kind, self.db_uri),
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
        return SqlJobStore(self.db_uri, self.queue.table_prefix, on_ack=self.queue.on_ack)

    def fail_delivery(self, app: Any, job: Job, delivery_tag: str | None, error: str) -> None:
        # The row is the job's record: it says failed, and its lease no longer expires into a
        # redelivery.
        self._settle_claim(delivery_tag, error)

    def requeue_lost(self, app: Any, job: Job, delivery_tag: str | None) -> None:
        self._settle_claim(delivery_tag, None)

    def _settle_claim(self, delivery_tag: str | None, error: str | None) -> None:
        """Fail (with ``error``) or queue again (``error`` None) the claim of ``delivery_tag``
        (the transport's "<row id>.<claims so far>"), whichever process holds it."""
        claim = claim_of(delivery_tag)
        store = self.store
        if claim is None or not isinstance(store, SqlJobStore):
            return
        table = store.table
        transport_queries = queries.queries_for(table.tables, table.dialect)
        params: dict[str, Any] = {"job_id": claim.id, "claim_attempts": claim.attempts, "now": utcnow()}
        statement = transport_queries.requeue_claim
        if error is not None:
            statement, params = transport_queries.fail_claim, {**params, "error": error, "error_class": None}
        with table._ready().begin() as conn:
            conn.execute(statement, params)

    def lost_deliveries(self, task_id: str, delivery_tag: Any) -> int:
        # The transport's delivery tag is "<row id>.<claims so far>".
        try:
            return int(str(delivery_tag).rsplit(".", 1)[1])
        except (IndexError, ValueError):
            return 1

    def transaction_connection(self, transaction: Any) -> Any:
        from unified_jobs.adapters.transactions import connection_of

        conn = connection_of(transaction)
        return conn if conn is not None and _same_database(conn.engine.url, self.queue.uri) else None

    @contextmanager
    def _writing(self, producer: Any) -> Iterator[Any]:
        """``producer``'s channel (our SQL channel), connected as a publish connects (a hung
        database is one timeout, in ``bounded()``); a database error in the block comes out
        as kombu's, as a publish's does; once it is written, the consumers are woken."""
        from kombu.exceptions import OperationalError

        from unified_jobs.adapters.celery.publish_retry import PUBLISH_RETRY_POLICY

        producer.connection.ensure_connection(**PUBLISH_RETRY_POLICY)
        try:
            yield producer.channel
        except SQLAlchemyError as exc:
            raise OperationalError(str(exc)) from exc
        producer.channel.connection.poke()

    @contextmanager
    def batch_transaction(self, producer: Any) -> Iterator[Any]:
        # The transport's own engine: every row of the batch, or none.
        with self._writing(producer) as channel, channel.connection.engine.begin() as connection:
            yield connection

    def insert_one(self, producer: Any, job: Job, priority: int, payload: str) -> None:
        # One INSERT of one row is atomic on its own: in autocommit, without BEGIN and COMMIT
        # (prepared.py).
        with self._writing(producer) as channel:
            channel.put_one(job, priority, payload)

    def job_table(self) -> SqlTable:
        return SqlTable(self.db_uri, self.queue.table_prefix)

    def health(self, *, fix: bool, timeout: float) -> list[Check]:
        from sqlalchemy import inspect, select
        from sqlalchemy.engine import make_url

        from unified_jobs.adapters.sql import SCHEMA_VERSION, broker_url
        from unified_jobs.adapters.sql.engine import get_engine, libpq_connect_timeout, normalize_db_url
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
                url = url.update_query_dict({"connect_timeout": str(libpq_connect_timeout(timeout))})
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

        return SqlScheduleState(self.db_uri, self.queue.table_prefix)


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
