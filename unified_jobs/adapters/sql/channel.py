"""The SQL transport's kombu channel: the thin kombu side of the lease engine.

Rows in (``_put``), claimed rows out as kombu messages (``drain_events``), and kombu's acks,
rejects and restores handed to ``leases.Leases``, which does every write. See
``transport.py`` for the life of a message, and docs/explanation/sql-queue.md.

Remote control (fanout/topic routing, and control queues such as Celery's pidbox, reply and
event queues, whose messages never go to the jobs table) is the base class's, in ``control.py``.
"""

from __future__ import annotations

import binascii
import json
import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from queue import Empty
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from kombu.transport import virtual
from kombu.transport.virtual.base import queue_declare_ok_t  # type: ignore[attr-defined]
from sqlalchemy.engine import Row

from unified_jobs.adapters.liveness import note_poll
from unified_jobs.adapters.sql import publishing
from unified_jobs.adapters.sql.background import AckWriter, Heartbeat
from unified_jobs.adapters.sql.broadcast import CONTROL_TAG_PREFIX
from unified_jobs.adapters.sql.control import ControlChannel
from unified_jobs.adapters.sql.leases import Action, Leases, aware, utcnow
from unified_jobs.adapters.sql.schema import ensure_schema_on
from unified_jobs.adapters.sql.wakeup import poke_local

if TYPE_CHECKING:
    from unified_jobs.adapters.sql.transport import Transport
    from unified_jobs.core.job import Job


__all__ = ["Channel", "QoS", "utcnow"]

logger = logging.getLogger(__name__)

_BAD_PAYLOAD_ERRORS = (ValueError, TypeError, KeyError, AttributeError, binascii.Error)


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
    return max(aware(when).astimezone(now.tzinfo), now)


def _due_as_its_row(payload: dict[str, Any], row: Row[Any]) -> None:
    """The row decides when a job is due: a claimed row (due now) whose message carries a later
    ``eta`` (a row moved to now by ``jobs retry``, an import or an edit) is delivered without
    it, so no worker holds it, leased and in a slot, until that time (year 9999 for good)."""
    headers = payload.get("headers")
    if not isinstance(headers, dict) or not headers.get("eta"):
        return
    now = utcnow()
    eta = _run_at(headers["eta"], now)
    if eta > max(now, aware(row.run_at)) + timedelta(seconds=1):
        logger.warning(
            "job %s: its message's eta %s is later than its row's run_at %s; it runs now, as its row says",
            headers.get("id"),
            headers["eta"],
            row.run_at,
        )
        headers["eta"] = None


def _priority(value: Any) -> int:
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:255]


def _until(value: Any) -> datetime | None:
    """A unique key's expiry from its header (ISO 8601); None if absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return aware(datetime.fromisoformat(value))
    except ValueError:
        return None


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


class Channel(ControlChannel):
    """One kombu channel; its claims are leased to ``self.owner``."""

    QoS = QoS
    connection: Transport

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}"
        self.leases = Leases(
            connection.engine, connection.queries, self.options, owner, on_free=connection.wakeup.set
        )
        self._no_ack_queues: set[str] = set()
        self._heartbeat: Heartbeat | None = None
        self._ack_writer: AckWriter | None = None
        ensure_schema_on(connection.engine, connection.tables)

    @property
    def next_due(self) -> datetime | None:
        """After an empty claim: when the earliest queued job of our queues is due (or None)."""
        return self.leases.next_due

    # --- kombu virtual channel API -----------------------------------------------------

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        spec = self._control_spec(queue)
        if spec is not None:
            self._put_control([(queue, spec)], message)
            return
        props = message.get("properties") or {}
        headers = message.get("headers") or {}
        now = utcnow()
        task_id = _text(headers.get("id") or props.get("correlation_id"))
        state = publishing.current()
        holder = self.leases.enqueue(
            queue=queue,
            payload=json.dumps(message),
            task_name=_text(headers.get("task")),
            task_id=task_id,
            priority=_priority(props.get("priority")),
            run_at=_run_at(headers.get("eta"), now),
            now=now,
            unique_key=_text(headers.get(publishing.UNIQUE_HEADER)),
            unique_until=_until(headers.get(publishing.UNIQUE_UNTIL_HEADER)),
            connection=state.connection if state is not None else None,
            # Only a caller that hears of it may be refused: a retry republished by a worker
            # whose key another job took over (past unique_for) is inserted without the key.
            refuse=state is not None and task_id is not None,
        )
        if holder is not None:
            assert state is not None and task_id is not None
            state.refused[task_id] = holder
            return
        if state is None or state.connection is None:
            self.connection.poke()  # committed
        else:  # the caller commits; whoever does pokes the other processes (batch_transaction)
            poke_local(self.connection.local_key)

    def put_many(self, messages: list[tuple[Job, int, str]], connection: Any) -> None:
        """``_put`` for a batch of Worker jobs' messages without unique keys, each (the job, its
        message's priority, the message's JSON text, of ``LeanPublisher.payload``): the rows in
        one statement (COPY on Postgres), in ``connection``'s transaction."""
        now = utcnow()
        rows = [_row(job, priority, payload, now) for job, priority, payload in messages]
        self.leases.enqueue_many(rows, connection)
        # No poke here: the rows are not committed yet; batch_transaction pokes after the commit.

    def put_one(self, job: Job, priority: int, payload: str) -> None:
        """``put_many`` of one message, as one statement in autocommit: committed on return
        (the caller pokes the consumers)."""
        self.leases.enqueue_one(_row(job, priority, payload, utcnow()))

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        if self.broadcast.declared_control(queue) is not None:
            for message, _ in self._take_control([queue], 1):
                return message
            raise Empty()
        for row in self.leases.claim([queue], 1):
            payload = self._decode(row)
            if payload is not None:
                return payload
        raise Empty()

    def queue_declare(self, queue: str | None = None, passive: bool = False, **kwargs: Any) -> Any:
        """Queues are implicit; a passive declare (``jobs list``, ``celery inspect``) counts the
        queue's jobs, a plain one (before a publish) does not: counting is a transaction of its
        own, which a publish in the caller's SQLite transaction would wait on for its lock."""
        if passive or queue is None:
            return super().queue_declare(queue, passive, **kwargs)  # type: ignore[no-untyped-call]
        self._new_queue(queue, **kwargs)
        return queue_declare_ok_t(queue, 0, 0)

    def _purge(self, queue: str) -> int:
        if self.broadcast.declared_control(queue) is not None:
            return self.broadcast.purge(queue)
        return self.leases.purge(queue)

    def _size(self, queue: str) -> int:
        if self.broadcast.declared_control(queue) is not None:
            return self.broadcast.size(queue)
        return self.leases.size(queue)

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        result = super().basic_consume(queue, no_ack, *args, **kwargs)  # type: ignore[no-untyped-call]
        spec = self.broadcast.declared_control(queue)
        if spec is not None and spec.auto_delete:
            self._auto_delete.add(queue)
        self._sort_queues()
        if self._heartbeat is None:
            self._heartbeat = Heartbeat(self)
            self._heartbeat.start()
        if self._ack_writer is None:
            self._ack_writer = AckWriter(self)
            self._ack_writer.start()
        self.connection.start_wakeups()
        return result

    def basic_cancel(self, consumer_tag: str) -> Any:
        result = super().basic_cancel(consumer_tag)  # type: ignore[no-untyped-call]
        self._sort_queues()
        return result

    def drain_events(self, timeout: float | None = None, callback: Callable[..., Any] | None = None) -> None:
        if not self._consumers:
            self.leases.next_due = None
            raise Empty()
        queues = self._job_queues
        if queues:  # consuming job queues: asking for jobs, even with every slot busy
            note_poll()
        deliver: Callable[..., Any] = callback or self.connection._deliver
        # Control messages first: few, and not held back by the prefetch limit of jobs.
        if self._control_queues and self._control_due() and self._deliver_control(deliver):
            return
        if not queues or not self.qos.can_consume():
            self.leases.next_due = None
            raise Empty()
        if not self.connection.jobs_due:
            raise Empty()  # woken to poll the control queues only; next_due still holds
        room = self.qos.can_consume_max_estimate()
        limit = min(self.options.batch_size, room) if room else self.options.batch_size
        rows = self.leases.claim(queues, limit)
        if not rows:
            raise Empty()
        # Register (and so heartbeat) the whole batch before delivering any of it: a delivery
        # can block for a long time (Celery's prefork pool, when all its processes are busy).
        batch = [(row.queue, p) for row in rows if (p := self._decode(row)) is not None]
        for i, (queue, payload) in enumerate(batch):
            try:
                deliver(payload, queue)
            except BaseException:
                self.leases.release([p["properties"]["delivery_tag"] for _, p in batch[i + 1 :]])
                raise
            if queue in self._no_ack_queues:
                self.settle(payload["properties"]["delivery_tag"], "ack")

    def close(self) -> None:
        transport = self.connection  # kombu's close detaches it
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
            self.leases.release_all()
            self._drop_auto_delete(transport)

    # --- rows ---------------------------------------------------------------------------

    def _decode(self, row: Row[Any]) -> dict[str, Any] | None:
        """The kombu message of a claimed row, held as ours; None (row failed) if bad."""
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
            self.leases.fail_unreadable(row, f"undecodable payload: {type(exc).__name__}: {exc}")
            return None
        _due_as_its_row(payload, row)
        props["delivery_tag"] = self.leases.hold(row)
        info = props.get("delivery_info")
        if isinstance(info, dict):
            info["redelivered"] = row.attempts > 1
        return payload

    def settle(self, delivery_tag: str, action: Action) -> None:
        """Record the outcome of one delivered job: "ack", "reject" or "requeue".

        Acks of a consuming channel are written by its ack writer thread, many per
        transaction; the job stays leased (and heartbeated) until the write. Rejects and
        requeues are written at once.
        """
        if delivery_tag.startswith(CONTROL_TAG_PREFIX):
            return  # taken (deleted) when delivered: at most once, nothing to write
        action = self.leases.resolve(delivery_tag, action)
        if action == "ack" and self._ack_writer is not None:
            if self.leases.queue_ack(delivery_tag):
                self._ack_writer.poke()
                self.connection.wakeup.set()  # a prefetch slot is free
            return
        self.leases.settle(delivery_tag, action)

    def note_failure(self, delivery_tag: str, error: str, error_class: str | None = None) -> None:
        """Why a delivered job failed, and the dotted path of its exception's class if known
        (``JobRequest`` calls this before the job is acked)."""
        self.leases.note_failure(delivery_tag, error, error_class)

    def note_result(self, delivery_tag: str, result: str) -> None:
        """What a delivered job returned, as JSON text: its ack writes it with the row's
        completion."""
        self.leases.note_result(delivery_tag, result)

    def note_superseded(self, delivery_tag: str) -> None:
        """The delivered job was republished for a retry: its ack deletes this row."""
        self.leases.note_superseded(delivery_tag)

    def note_cancelled(self, delivery_tag: str) -> None:
        """The delivered job stopped on a cancel request: its ack writes the row cancelled."""
        self.leases.note_cancelled(delivery_tag)

    def flush_acks(self) -> None:
        self.leases.flush_acks()

    def release_all(self) -> None:
        self.leases.release_all()

    def heartbeat(self) -> None:
        """Renew this channel's leases; requeue expired ones (and wake the consumer if any);
        keep the bindings of its control queues alive. A channel that only consumes control
        queues (``celery inspect``, Flower) leaves the job rows to the job consumers."""
        if (self._job_queues or self.leases.holds_claims()) and self.leases.heartbeat():
            self.connection.wakeup.set()
        self._control_upkeep()


def _row(job: Job, priority: int, payload: str, now: datetime) -> dict[str, Any]:
    """The queued row of ``job``'s message (``Leases.enqueue``'s parameters)."""
    return {
        "queue": job.queue,
        "task_name": _text(job.name),
        "task_id": _text(job.id),
        "payload": payload,
        "priority": priority,
        # As _run_at makes of the message's eta: a time past is now.
        "run_at": now if job.run_at is None else max(aware(job.run_at), now),
        "now": now,
    }
