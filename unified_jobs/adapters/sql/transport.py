"""The kombu virtual transport over a SQL jobs table (PostgreSQL or SQLite), with leases.

Broker URL: ``ujsql+postgresql://user@host/db`` or ``ujsql+sqlite:///path/jobs.db``.

Life of a message: ``_put`` inserts a ``queued`` row (run_at = the Celery ``eta``, priority
from the message). A consumer claims ready rows (``processing``, a lease owner and expiry,
``attempts + 1``) and delivers them; a heartbeat thread renews the leases of every job this
channel holds until it is acked (``completed`` or deleted), rejected (``failed``) or requeued
(``queued``). A consumer that dies stops renewing: another consumer's reaper requeues the job
once its lease expires. See docs/explanation/sql-queue.md.
"""

from __future__ import annotations

import binascii
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from queue import Empty
from time import monotonic
from typing import Any, NamedTuple
from uuid import uuid4

import sqlalchemy
from kombu.transport import virtual
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from unified_jobs.adapters.sql.engine import dialect_of, get_engine, normalize_db_url
from unified_jobs.adapters.sql.options import SqlOptions
from unified_jobs.adapters.sql.queries import queries_for
from unified_jobs.adapters.sql.schema import ensure_schema_on, tables_for
from unified_jobs.adapters.sql.wakeup import PgListener, poke_local, register_local, unregister_local
from unified_jobs.errors import MissingDependencyError

__all__ = ["Channel", "QoS", "Transport"]

logger = logging.getLogger(__name__)

_UTC = timezone.utc
_BAD_PAYLOAD_ERRORS = (ValueError, TypeError, KeyError, AttributeError, binascii.Error)


def _utcnow() -> datetime:
    return datetime.now(_UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands datetimes back naive; we only ever store UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=_UTC)


def _run_at(eta: Any, now: datetime) -> datetime:
    """The row's run_at from Celery's ``eta`` header (ISO 8601); now if absent or unreadable."""
    if not eta or not isinstance(eta, str):
        return now
    try:
        when = datetime.fromisoformat(eta.replace("Z", "+00:00"))
    except ValueError:
        logger.warning("unreadable eta header %r; the job is ready now", eta)
        return now
    # Celery sends UTC; a naive eta is read as UTC. A past eta is stored as now (FIFO order).
    return max(_aware(when).astimezone(_UTC), now)


def _priority(value: Any) -> int:
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:255]


class _Claim(NamedTuple):
    id: int
    attempts: int


class QoS(virtual.QoS):
    """kombu's QoS, with ack/reject/restore written to the job rows instead of re-publishing."""

    channel: Channel

    def ack(self, delivery_tag: str) -> None:
        self.channel.settle(delivery_tag, "ack")
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self.channel.settle(delivery_tag, "requeue" if requeue else "reject")
        self._quick_ack(delivery_tag)

    def restore_unacked(self) -> list[Any]:
        # Called on channel close (and basic_recover): unacked jobs go back to queued now,
        # rather than when their lease expires.
        self._flush()  # type: ignore[no-untyped-call]
        self._delivered.clear()
        self.channel.release_all()
        return []


class Channel(virtual.Channel):
    """One kombu channel; its claims are leased to ``self.owner``."""

    QoS = QoS
    connection: Transport

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)  # type: ignore[no-untyped-call]
        self.options = connection.options
        self.engine = connection.engine
        self.q = connection.queries
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}"
        self._claims: dict[str, _Claim] = {}
        self._claims_lock = threading.Lock()
        self._no_ack_queues: set[str] = set()
        self._heartbeat: _Heartbeat | None = None
        #: After an empty claim: when the earliest queued job of our queues is due (or None).
        self.next_due: datetime | None = None
        ensure_schema_on(self.engine, connection.tables)

    # --- kombu virtual channel API -----------------------------------------------------

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        """Queues are implicit: a row names its queue."""

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        props = message.get("properties") or {}
        headers = message.get("headers") or {}
        now = _utcnow()
        params = {
            "queue": queue,
            "task_name": _text(headers.get("task")),
            "task_id": _text(headers.get("id") or props.get("correlation_id")),
            "payload": json.dumps(message),
            "priority": _priority(props.get("priority")),
            "run_at": _run_at(headers.get("eta"), now),
            "now": now,
        }
        with self.engine.begin() as conn:
            conn.execute(self.q.enqueue, params)
        poke_local(self.connection.local_key)

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        for row in self._claim([queue], 1):
            payload = self._decode(row)
            if payload is not None:
                return payload
        raise Empty()

    def _purge(self, queue: str) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(self.q.purge, {"queue": queue}).rowcount)

    def _size(self, queue: str) -> int:
        with self.engine.begin() as conn:
            n: int = conn.execute(self.q.size, {"queue": queue}).scalar_one()
            return n

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        result = super().basic_consume(queue, no_ack, *args, **kwargs)  # type: ignore[no-untyped-call]
        if self._heartbeat is None:
            self._heartbeat = _Heartbeat(self)
            self._heartbeat.start()
        self.connection.start_wakeups()
        return result

    def drain_events(self, timeout: float | None = None, callback: Callable[..., Any] | None = None) -> None:
        self.next_due = None
        if not self._consumers or not self.qos.can_consume():
            raise Empty()
        # Pidbox (remote control) queues are fed through fanout exchanges, which this
        # transport does not support, so they stay empty: don't poll them.
        queues = sorted({q for q in self._active_queues if not q.endswith(".pidbox")})
        if not queues:
            raise Empty()
        room = self.qos.can_consume_max_estimate()
        limit = min(self.options.batch_size, room) if room else self.options.batch_size
        rows = self._claim(queues, limit)
        if not rows:
            raise Empty()
        deliver: Callable[..., Any] = callback or self.connection._deliver
        # Register (and so heartbeat) the whole batch before delivering any of it: a delivery
        # can block for a long time (Celery's prefork pool, when all its processes are busy).
        batch = [(row.queue, p) for row in rows if (p := self._decode(row)) is not None]
        for i, (queue, payload) in enumerate(batch):
            try:
                deliver(payload, queue)
            except BaseException:
                self._release([p["properties"]["delivery_tag"] for _, p in batch[i + 1 :]])
                raise
            if queue in self._no_ack_queues:
                self.settle(payload["properties"]["delivery_tag"], "ack")

    def close(self) -> None:
        try:
            super().close()  # type: ignore[no-untyped-call]  # restores unacked jobs (QoS.restore_unacked)
        finally:
            if self._heartbeat is not None:
                self._heartbeat.stop()
                self._heartbeat = None
            self.release_all()

    # --- rows ---------------------------------------------------------------------------

    def _begin_fast(self, conn: Connection) -> None:
        if self.q.async_commit is not None and self.options.async_commit:
            conn.execute(self.q.async_commit)

    def _claim(self, queues: Sequence[str], limit: int) -> list[Row[Any]]:
        now = _utcnow()
        params = {
            "queues": list(queues),
            "limit": limit,
            "now": now,
            "owner": self.owner,
            "lease_until": now + timedelta(seconds=self.options.lease_sec),
        }
        with self.engine.begin() as conn:
            self._begin_fast(conn)
            rows = list(conn.execute(self.q.claim, params).all())
            if not rows:
                due = conn.execute(self.q.next_due, {"queues": list(queues)}).scalar()
                self.next_due = _aware(due) if isinstance(due, datetime) else None
                return []
        # RETURNING does not keep the subquery's order.
        rows.sort(key=lambda r: (-r.priority, _aware(r.run_at), r.id))
        return rows

    def _decode(self, row: Row[Any]) -> dict[str, Any] | None:
        """The kombu message of a claimed row, registered as ours; None (row failed) if bad."""
        try:
            payload = json.loads(row.payload)
            if not isinstance(payload, dict):
                raise ValueError("payload is not a JSON object")
            props = payload.get("properties")
            if not isinstance(props, dict):
                raise ValueError("payload has no 'properties' object, so it is not a kombu message")
            body = payload.get("body")
            if body:
                decoded = self.decode_body(body, props.get("body_encoding"))  # type: ignore[no-untyped-call]
                if payload.get("content-type") == "application/json":
                    json.loads(decoded)
        except _BAD_PAYLOAD_ERRORS as exc:
            reason = f"undecodable payload: {type(exc).__name__}: {exc}"
            logger.error("job %s in queue %r marked failed: %s", row.id, row.queue, reason)
            self._write(self.q.fail, [self._params(_Claim(row.id, row.attempts), error=reason)])
            return None
        # A tag per claim, so two claims of one row (after a lost lease) never collide.
        tag = f"{row.id}.{row.attempts}"
        props["delivery_tag"] = tag
        info = props.get("delivery_info")
        if isinstance(info, dict):
            info["redelivered"] = row.attempts > 1
        with self._claims_lock:
            self._claims[tag] = _Claim(row.id, row.attempts)
        return payload

    def _params(self, claim: _Claim, **extra: Any) -> dict[str, Any]:
        ident = {"job_id": claim.id, "claim_attempts": claim.attempts, "owner": self.owner}
        return {**ident, "now": _utcnow(), **extra}

    def _write(self, stmt: Any, params: list[dict[str, Any]]) -> int:
        """Run ``stmt`` for each params dict in one transaction; rows changed (-1 if unknown)."""
        if not params:
            return 0
        with self.engine.begin() as conn:
            self._begin_fast(conn)
            return int(conn.execute(stmt, params).rowcount)

    def settle(self, delivery_tag: str, action: str) -> None:
        """Write the outcome of one delivered job: "ack", "reject" or "requeue"."""
        with self._claims_lock:
            claim = self._claims.pop(delivery_tag, None)
        if claim is None:
            return
        if action == "ack":
            stmt = self.q.complete if self.options.on_ack == "complete" else self.q.delete_claimed
            params = self._params(claim)
        elif action == "reject":
            stmt, params = self.q.fail, self._params(claim, error="rejected by the consumer (requeue=False)")
        else:
            stmt, params = self.q.requeue, self._params(claim)
        try:
            changed = self._write(stmt, [params])
        except SQLAlchemyError:
            # The lease will expire and the job run again: at-least-once, never lost.
            logger.exception("could not record %s of job %s; it will be redelivered", action, claim.id)
        else:
            if changed == 0:
                logger.warning(
                    "job %s: lease lost before its %s (it was redelivered, so it may run twice)",
                    claim.id, action,
                )
        self.connection.wakeup.set()  # a prefetch slot is free

    def release_all(self) -> None:
        """Put every job this channel holds back to queued."""
        with self._claims_lock:
            claims = list(self._claims.values())
            self._claims.clear()
        self._requeue(claims)

    def _release(self, tags: Sequence[str]) -> None:
        with self._claims_lock:
            claims = [c for t in tags if (c := self._claims.pop(t, None)) is not None]
        self._requeue(claims)

    def _requeue(self, claims: list[_Claim]) -> None:
        if not claims:
            return
        try:
            self._write(self.q.requeue, [self._params(c) for c in claims])
        except SQLAlchemyError:
            logger.warning(
                "could not requeue %d job(s) now; their leases will expire", len(claims), exc_info=True
            )

    def heartbeat(self) -> None:
        """Renew the leases of all jobs this channel holds, then requeue expired ones."""
        with self._claims_lock:
            ids = [c.id for c in self._claims.values()]
        now = _utcnow()
        with self.engine.begin() as conn:
            self._begin_fast(conn)
            if ids:
                until = now + timedelta(seconds=self.options.lease_sec)
                conn.execute(self.q.heartbeat, {"ids": ids, "owner": self.owner, "lease_until": until})
            if self.options.max_attempts:
                limit = {"now": now, "max_attempts": self.options.max_attempts}
                failed = conn.execute(self.q.reap_exhausted, limit)
                if failed.rowcount:
                    logger.error("%d job(s) failed: lease expired after max_attempts claims", failed.rowcount)
            requeued = conn.execute(self.q.reap, {"now": now}).rowcount
        if requeued:
            logger.warning("%d job(s) requeued after their lease expired", requeued)
            self.connection.wakeup.set()


class _Heartbeat(threading.Thread):
    def __init__(self, channel: Channel) -> None:
        super().__init__(name="unified_jobs-sql-heartbeat", daemon=True)
        self._channel = channel
        self._interval = channel.options.effective_heartbeat_sec
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while True:
            try:
                self._channel.heartbeat()
            except Exception:
                logger.warning("SQL queue heartbeat failed; retrying", exc_info=True)
            if self._stop_event.wait(self._interval):
                return


class Transport(virtual.Transport):
    """kombu transport ``ujsql``; see the module docstring."""

    Channel = Channel
    can_parse_url = True
    default_port = 0  # type: ignore[assignment]
    driver_type = "sql"
    driver_name = "unified_jobs_sql"
    connection_errors = (OperationalError, InterfaceError)  # type: ignore[assignment]
    channel_errors = (SQLAlchemyError,)
    implements = virtual.Transport.implements.extend(
        asynchronous=False, exchange_type=frozenset(["direct", "topic"]), heartbeats=False
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)  # type: ignore[no-untyped-call]
        self.options = SqlOptions.from_transport_options(client.transport_options or {})
        self.db_url = normalize_db_url(client.hostname)
        self.dialect = dialect_of(self.db_url)
        if self.dialect == "postgresql":
            try:
                import psycopg  # noqa: F401
            except ImportError as exc:
                raise MissingDependencyError(
                    "the Postgres queue needs psycopg 3: pip install 'unified-jobs[postgres]'"
                ) from exc
        self.engine = get_engine(
            self.db_url,
            busy_timeout_sec=self.options.busy_timeout_sec,
            sqlite_synchronous=self.options.sqlite_synchronous,
            engine_options=self.options.engine_options,
        )
        self.tables = tables_for(self.options.table_prefix)
        self.queries = queries_for(self.tables, self.dialect)
        self.local_key = (self.engine.url.render_as_string(hide_password=True), self.tables.prefix)
        self.wakeup = threading.Event()
        self._listener: PgListener | None = None
        self._wakeups_on = False
        pg = self.dialect == "postgresql"
        self._idle_poll = self.options.poll_interval_sec if pg else self.options.sqlite_poll_interval_sec

    def driver_version(self) -> str:
        return str(sqlalchemy.__version__)

    def start_wakeups(self) -> None:
        """Once a consumer exists: in-process pokes, and LISTEN on Postgres."""
        if self._wakeups_on:
            return
        self._wakeups_on = True
        register_local(self.local_key, self)
        if self.dialect == "postgresql":
            self._listener = PgListener(self.db_url, self.tables.notify_channel, self.wakeup)
            self._listener.start()
            # Don't miss a NOTIFY sent while LISTEN is being set up: wait briefly for it.
            self._listener.connected.wait(2.0)

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        """Deliver one batch; between empty polls, sleep until woken or the next poll."""
        start = monotonic()
        while True:
            self.wakeup.clear()
            try:
                self.cycle.get(self._deliver, timeout=timeout)  # type: ignore[union-attr]
                return
            except Empty:
                pass
            wait = self._idle_wait()
            if timeout is not None:
                left = timeout - (monotonic() - start)
                if left <= 0:
                    raise TimeoutError()  # socket.timeout: what Celery expects
                wait = min(wait, left)
            self.wakeup.wait(wait)

    def _idle_wait(self) -> float:
        wait = self._idle_poll
        now = _utcnow()
        for channel in self.channels:
            due = getattr(channel, "next_due", None)
            if due is not None:
                # A floor, so rows locked by another claimer are not polled in a busy loop.
                wait = min(wait, max((due - now).total_seconds(), 0.01))
        return wait

    def close_connection(self, connection: Any) -> None:
        try:
            super().close_connection(connection)  # type: ignore[no-untyped-call]
        finally:
            if self._listener is not None:
                self._listener.stop()
                self._listener = None
            if self._wakeups_on:
                unregister_local(self.local_key, self)
                self._wakeups_on = False
