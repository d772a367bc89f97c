"""The SQL transport's kombu channel: rows in, messages out, outcomes written back.

See ``transport.py`` for the life of a message, and docs/explanation/sql-queue.md.
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
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import uuid4

from kombu.transport import virtual
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import SQLAlchemyError

from unified_jobs.adapters.sql.background import AckWriter, Heartbeat
from unified_jobs.adapters.sql.schema import ensure_schema_on
from unified_jobs.adapters.sql.wakeup import poke_local

if TYPE_CHECKING:
    from unified_jobs.adapters.sql.transport import Transport

__all__ = ["Channel", "QoS", "utcnow"]

logger = logging.getLogger(__name__)

_UTC = timezone.utc
_BAD_PAYLOAD_ERRORS = (ValueError, TypeError, KeyError, AttributeError, binascii.Error)


def utcnow() -> datetime:
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
        #: Why a delivered job failed (set by the worker just before it rejects the job).
        self._failure_notes: dict[str, str] = {}
        #: Delivered jobs republished for a retry (their ack deletes the old row).
        self._superseded: set[str] = set()
        self._no_ack_queues: set[str] = set()
        self._heartbeat: Heartbeat | None = None
        self._acks: list[str] = []
        self._ack_writer: AckWriter | None = None
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
        now = utcnow()
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
            self._heartbeat = Heartbeat(self)
            self._heartbeat.start()
        if self._ack_writer is None:
            self._ack_writer = AckWriter(self)
            self._ack_writer.start()
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
            if self._ack_writer is not None:
                self._ack_writer.stop()
                self._ack_writer = None
            # Writes pending acks, then restores unacked jobs (QoS.restore_unacked).
            super().close()  # type: ignore[no-untyped-call]
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
        now = utcnow()
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
        return {**ident, "now": utcnow(), **extra}

    def _write(self, stmt: Any, params: list[dict[str, Any]]) -> int:
        """Run ``stmt`` for each params dict in one transaction; rows changed (-1 if unknown)."""
        if not params:
            return 0
        with self.engine.begin() as conn:
            self._begin_fast(conn)
            return int(conn.execute(stmt, params).rowcount)

    def settle(self, delivery_tag: str, action: str) -> None:
        """Record the outcome of one delivered job: "ack", "reject" or "requeue".

        Acks of a consuming channel are written by its ack writer thread, many per
        transaction; the job stays leased (and heartbeated) until the write. Rejects and
        requeues are written at once.
        """
        with self._claims_lock:
            if action == "ack" and delivery_tag in self._failure_notes:
                action = "reject"  # a failed job is acked (as Celery does); its row says failed
            elif action == "ack" and delivery_tag in self._superseded:
                self._superseded.discard(delivery_tag)
                action = "supersede"
        if action == "ack" and self._ack_writer is not None:
            with self._claims_lock:
                if delivery_tag not in self._claims:
                    return
                self._acks.append(delivery_tag)
            self._ack_writer.poke()
            self.connection.wakeup.set()  # a prefetch slot is free
            return
        with self._claims_lock:
            claims = self._pop_claims([delivery_tag])
            note = self._failure_notes.pop(delivery_tag, None)
        self._write_outcome(claims, action, error=note)

    def note_failure(self, delivery_tag: str, error: str) -> None:
        """Record why a job failed; its coming ack or reject writes the row failed, with this as
        its ``last_error``."""
        with self._claims_lock:
            if delivery_tag in self._claims:
                self._failure_notes[delivery_tag] = error[:16000]

    def note_superseded(self, delivery_tag: str) -> None:
        """The job was republished for a retry: its coming ack deletes this row."""
        with self._claims_lock:
            if delivery_tag in self._claims:
                self._superseded.add(delivery_tag)

    def flush_acks(self) -> None:
        """Write the pending acks now."""
        with self._claims_lock:
            tags, self._acks = self._acks, []
            claims = self._pop_claims(tags)
        self._write_outcome(claims, "ack")

    def _pop_claims(self, tags: Sequence[str]) -> list[_Claim]:
        return [c for t in tags if (c := self._claims.pop(t, None)) is not None]

    def _write_outcome(self, claims: list[_Claim], action: str, error: str | None = None) -> None:
        if not claims:
            return
        if action == "ack":
            stmt = self.q.complete if self.options.on_ack == "complete" else self.q.delete_claimed
            params = [self._params(c) for c in claims]
        elif action == "supersede":
            stmt, params = self.q.delete_claimed, [self._params(c) for c in claims]
        elif action == "reject":
            error = error or "rejected by the consumer (requeue=False)"
            stmt, params = self.q.fail, [self._params(c, error=error) for c in claims]
        else:
            stmt, params = self.q.requeue, [self._params(c) for c in claims]
        try:
            changed = self._write(stmt, params)
        except SQLAlchemyError:
            # The leases will expire and the jobs run again: at-least-once, never lost.
            logger.exception(
                "could not record %s of job(s) %s; they will be redelivered", action, [c.id for c in claims]
            )
        else:
            if 0 <= changed < len(claims):
                logger.warning(
                    "%d of %d job(s) lost their lease before their %s (they were redelivered, so may "
                    "run twice): %s",
                    len(claims) - changed,
                    len(claims),
                    action,
                    [c.id for c in claims],
                )
        self.connection.wakeup.set()  # a prefetch slot is free

    def release_all(self) -> None:
        """Write pending acks, then put every other job this channel holds back to queued."""
        self.flush_acks()
        with self._claims_lock:
            claims = list(self._claims.values())
            self._claims.clear()
        self._requeue(claims)

    def _release(self, tags: Sequence[str]) -> None:
        with self._claims_lock:
            claims = self._pop_claims(tags)
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
        now = utcnow()
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
