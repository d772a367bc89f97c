"""The RabbitMQ kind: kombu's py-amqp transport, priority queues, delays kept by the broker, and
the Redis job store (``queue.store_uri``) beside it, since RabbitMQ keeps messages, not records.

Queues are classic, durable and declared with ``x-max-priority: 10`` (Celery's
``task_queue_max_priority``), so a job's priority 0-9 is RabbitMQ's own (higher first); messages
are persistent. Quorum queues would survive the loss of a node, but before RabbitMQ 4.0 they
have no priorities (4.0: two levels), so they cannot keep 0-9.

Delays: a worker takes a message with an eta at once and holds it unacked until then, and
RabbitMQ closes a channel that holds a delivery past its consumer timeout (30 min by default).
So a message due one second or more ahead goes to a chain of delay queues instead, and reaches
its queue when due (under two seconds early; the worker holds it for the rest). Level ``k`` is a
headers exchange and a queue whose messages expire after 2**k seconds; the message's
``uj-delay-<k>`` headers (the bits of its wait) say at which levels it waits and which it
skips. Level 0 is always the last hop, and dead-letters to the default exchange with the
message's own routing key: its queue, as for any other message. This is the topology of
Celery's native delayed delivery (which Celery only turns on for quorum queues, and whose last
hop leaves the wait in the routing key), with the routing key kept.

The rerouting happens in the transport's ``basic_publish``, so every publish takes it: jobs,
retries with backoff, and an adopted app's own tasks with a countdown or eta. Messages for a
named exchange other than the default are sent as they are (Celery holds those until due).

Liveness: RabbitMQ pushes messages, so a worker never asks for jobs, and a worker that is
alive but no longer consumes (its consumer cancelled, its channel closed, its event loop stuck)
shows nothing by itself. So the transport stamps ``liveness.note_poll()`` each second of the
worker's event loop (each ``drain_events`` call without one) while a channel of its connection
holds a consumer that acknowledges: the task consumer (Celery's remote control, gossip and
event consumers take no acks). ``doctor --workers`` reads that as the worker's last poll. What
it cannot see is a broker that stops delivering on a channel that looks open.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, cast

from kombu.transport import pyamqp

from unified_jobs._uri import mask_uri
from unified_jobs.adapters.celery.kinds import Check, QueueKind, not_answering, short_connection
from unified_jobs.adapters.celery.kinds.redis import RedisJobStore
from unified_jobs.adapters.liveness import note_poll
from unified_jobs.core.store import JobStore

__all__ = ["DELAYED_ROW", "LEVELS", "MAX_PRIORITY", "RabbitMQKind", "SSLTransport", "Transport"]

#: ``x-max-priority`` of every queue: priorities 0-9 (and 10, unused).
MAX_PRIORITY = 10
#: Delay levels: waits up to 2**LEVELS - 1 seconds (8.5 years).
LEVELS = 28
DELAY_PREFIX = "unified_jobs.delay"
DELAY_HEADER = "uj-delay-"
#: The row of ``jobs list`` that counts the jobs in the delay queues (shared by the vhost).
DELAYED_ROW = "(delayed, whole vhost)"


def level_name(level: int) -> str:
    return f"{DELAY_PREFIX}.{level}"


def delay_seconds(eta: Any) -> int | None:
    """The whole seconds a message due at ``eta`` waits in the delay queues (odd, so that it
    ends at level 0), or None if it is due in less than a second."""
    try:
        due = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
        if not isinstance(due, datetime):
            return None
    except ValueError:
        return None  # not ours to judge: the worker reads the eta as Celery does
    if due.tzinfo is None:
        due = due.replace(tzinfo=timezone.utc)
    wait = int((due - datetime.now(timezone.utc)).total_seconds())
    if wait < 1:
        return None
    if not wait & 1:
        wait -= 1
    if wait >= 2**LEVELS:
        raise ValueError(f"cannot delay a job by {wait} s on RabbitMQ: at most {2**LEVELS - 1} s (8.5 years)")
    return wait


def declare_delay_queues(channel: Any) -> None:
    """Declare the delay levels (idempotent; every object is durable)."""
    for level in range(LEVELS):
        name = level_name(level)
        channel.exchange_declare(name, "headers", durable=True, auto_delete=False)
        channel.queue_declare(
            name,
            durable=True,
            auto_delete=False,
            arguments={
                "x-message-ttl": 2**level * 1000,
                "x-dead-letter-exchange": level_name(level - 1) if level else "",
            },
        )
        channel.queue_bind(name, name, "", arguments={"x-match": "all", f"{DELAY_HEADER}{level}": "1"})
        if level:
            channel.exchange_bind(
                level_name(level - 1), name, "", arguments={"x-match": "all", f"{DELAY_HEADER}{level}": "0"}
            )


def _route_delayed(msg: Any) -> str | None:
    """If ``msg`` is due later, rewrite its headers for the delay queues and return the
    exchange to publish it to."""
    headers = msg.properties.get("application_headers") or {}
    eta = headers.get("eta")
    wait = delay_seconds(eta) if eta else None
    if wait is None:
        return None
    # x-death of an earlier trip (a retry's headers are copied from its request) would make
    # RabbitMQ see a dead-letter cycle and drop the message.
    rewritten = {k: v for k, v in headers.items() if k != "x-death" and not k.startswith(DELAY_HEADER)}
    top = wait.bit_length() - 1
    for level in range(top + 1):
        rewritten[f"{DELAY_HEADER}{level}"] = "1" if wait >> level & 1 else "0"
    msg.properties["application_headers"] = rewritten
    msg.properties.pop("expiration", None)  # a per-message TTL would cut a level's wait short
    return level_name(top)


class Channel(pyamqp.Channel):
    def _basic_publish(
        self, msg: Any, exchange: str = "", routing_key: str = "", *args: Any, **kwargs: Any
    ) -> Any:
        if exchange == "":
            delayed = _route_delayed(msg)
            if delayed is not None:
                if not self.connection.delay_queues_declared:
                    declare_delay_queues(self)
                    self.connection.delay_queues_declared = True
                exchange = delayed
        return super()._basic_publish(msg, exchange, routing_key, *args, **kwargs)

    basic_publish = _basic_publish

    def create_publish_batch(self, max_size: int) -> PublishBatch:
        return PublishBatch(self, max_size)


class PublishBatch:
    """The publishes of one ``Producer.batch`` (``perform_all_later``), in one AMQP transaction
    on a channel of their own: RabbitMQ takes all of them or none, and the commit returns once
    it has them (one round trip for the batch, where confirms wait for each message)."""

    def __init__(self, channel: Channel, max_size: int) -> None:
        self.channel = channel
        self.max_size = max_size
        self._tx: Channel | None = None
        self._pending = 0

    def publish(self, message: Any, **kwargs: Any) -> Any:
        if self._tx is None:
            self._tx = self.channel.connection.channel()
            self._tx.tx_select()
        self._pending += 1
        # _basic_publish, not basic_publish: a channel in confirm mode cannot be transactional
        result = self._tx._basic_publish(message, **kwargs)
        if self._pending >= self.max_size:
            self.flush()
        return result

    def flush(self) -> None:
        if self._tx is not None and self._pending:
            self._tx.tx_commit()
            self._pending = 0

    def discard(self) -> None:
        if self._tx is not None and self._pending:
            self._pending = 0
            with contextlib.suppress(Exception):  # closing the channel rolls back as well
                self._tx.tx_rollback()

    def close(self) -> None:
        if self._tx is not None:
            _close_quietly(self._tx)
            self._tx = None


class Connection(pyamqp.Connection):
    Channel = Channel
    #: Declared once per connection: a publish to a missing exchange would close the channel.
    delay_queues_declared = False


#: Seconds between the event loop's checks that the task consumer is in place (see above).
CONSUMER_CHECK_EVERY = 1.0


def consuming(connection: Any) -> bool:
    """Whether a channel of this py-amqp connection holds a consumer that takes acks."""
    if not connection.connected:
        return False
    for channel in list((connection.channels or {}).values()):
        tags = getattr(channel, "callbacks", None)
        if tags and getattr(channel, "is_open", False) and set(tags) - channel.no_ack_consumers:
            return True
    return False


class _WatchesConsumer:
    """Stamps ``note_poll`` while the worker's connection holds its task consumer."""

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)  # type: ignore[misc]
        entry: Any = None

        def check() -> None:
            if not connection.connected:  # closed: a new connection has a check of its own
                entry.cancel()
            elif consuming(connection):
                note_poll()

        entry = loop.call_repeatedly(CONSUMER_CHECK_EVERY, check)

    def drain_events(self, connection: Any, **kwargs: Any) -> Any:
        # The loop without an event loop (e.g. the solo pool) drains with a timeout, again and again.
        if consuming(connection):
            note_poll()
        return super().drain_events(connection, **kwargs)  # type: ignore[misc]


class Transport(_WatchesConsumer, pyamqp.Transport):
    """kombu's py-amqp transport whose publishes send delayed messages to the delay queues,
    whose publish batches are transactions, and which stamps the worker's polls (see above)."""

    Connection = Connection
    implements = pyamqp.Transport.implements.extend(batch_publish=True)


class SSLTransport(_WatchesConsumer, pyamqp.SSLTransport):
    Connection = Connection
    implements = Transport.implements


class RabbitMQKind(QueueKind):
    cancel_running = True
    records_unrunnable = True

    @property
    def _transport(self) -> str:
        ssl = self.queue.uri.strip().lower().startswith("amqps:")
        return f"{__name__}:{'SSLTransport' if ssl else 'Transport'}"

    @property
    def amqp_connect_timeout(self) -> float:
        """py-amqp's ``connect_timeout`` (seconds): one timeout for the TCP connect and for each
        wait of the TLS and AMQP handshakes (the broker's answers, its login check included),
        so the longer of ``queue.connect_timeout`` and ``queue.read_timeout``."""
        return max(self.queue.connect_timeout_sec, self.queue.read_timeout_sec)

    def broker_settings(self) -> dict[str, Any]:
        read = self.queue.read_timeout_sec
        return {
            "broker_url": self.queue.uri,
            "broker_transport": self._transport,
            "broker_transport_options": {
                # A publish returns once RabbitMQ has the message (or raises): "Nothing was
                # enqueued" is then true when enqueueing fails.
                "confirm_publish": self.queue.confirm_publish,
                # Passed to amqp.Connection: a broker that does not answer (the handshake, a
                # publish's confirm, a batch's commit) or takes nothing more (a write blocked
                # by a memory alarm) fails the call after these, instead of hanging.
                "connect_timeout": self.amqp_connect_timeout,
                "read_timeout": read,
                "write_timeout": read,
            },
            "task_queue_max_priority": MAX_PRIORITY,
        }

    def make_store(self) -> JobStore:
        assert self.queue.store_uri is not None  # the config requires it
        return RedisJobStore(
            self.queue.store_uri,
            self.workers.keep_completed,
            connect_timeout=self.queue.connect_timeout_sec,
            read_timeout=self.queue.read_timeout_sec,
        )

    def lost_deliveries(self, task_id: str, delivery_tag: Any) -> int:
        store = self.store
        assert isinstance(store, RedisJobStore)
        return store.note_lost(task_id)

    def _connection(self, timeout: float) -> Any:
        from kombu.connection import Connection as KombuConnection

        return KombuConnection(  # type: ignore[no-untyped-call]
            self.queue.uri, transport=self._transport, connect_timeout=timeout
        )

    def health(self, *, fix: bool, timeout: float) -> list[Check]:
        where = f"RabbitMQ at {mask_uri(self.queue.uri)}"
        started = time.monotonic()
        conn = self._connection(timeout)
        try:
            conn.ensure_connection(max_retries=0)
            version = conn.connection.server_properties.get("version", "?")
            checks: list[Check] = [
                (
                    "ok",
                    "queue",
                    f"{where} (RabbitMQ {version}) answered in {(time.monotonic() - started) * 1000:.0f} ms",
                )
            ]
            checks.append(self._check_delay_queues(conn, fix))
        except Exception as exc:
            return [("fail", "queue", not_answering(where, exc))]
        finally:
            conn.release()
        return [*checks, self._check_store(timeout)]

    def _check_delay_queues(self, conn: Any, fix: bool) -> Check:
        channel = conn.channel()
        try:
            if fix:
                declare_delay_queues(channel)
                return ("ok", "delays", f"declared the {LEVELS} delay queues ({DELAY_PREFIX}.*)")
            try:
                channel.exchange_declare(level_name(LEVELS - 1), "headers", passive=True)
            except conn.channel_errors:
                return (
                    "warn",
                    "delays",
                    f"the delay queues ({DELAY_PREFIX}.*) are not declared yet; the first delayed "
                    "job declares them, or run `unified-jobs doctor --fix`",
                )
            return ("ok", "delays", f"the {LEVELS} delay queues ({DELAY_PREFIX}.*) are declared")
        finally:
            channel.close()

    def _check_store(self, timeout: float) -> Check:
        import redis

        uri = self.queue.store_uri or ""
        where = f"the job store (queue.store_uri) at {mask_uri(uri)}"
        try:
            client = redis.Redis.from_url(uri, socket_timeout=timeout, socket_connect_timeout=timeout)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            return ("fail", "store", not_answering(where, exc))
        return ("ok", "store", f"{where} answered PING")

    def queue_lengths(self, app: Any, names: list[str]) -> tuple[dict[str, int], dict[str, int]]:
        # Connected first: a broker that is down is said so at once, not after the workers'
        # inspection (on a connection of its own) has tried and waited too.
        with short_connection(app) as conn, ThreadPoolExecutor(max_workers=1) as pool:
            reserved = pool.submit(_reserved_by_workers, app, set(names))
            queued = {name: _ready(conn, name) for name in names}
            queued[DELAYED_ROW] = sum(_ready(conn, level_name(level)) for level in range(LEVELS))
            return queued, reserved.result()

    def purge_queues(self, app: Any, names: list[str]) -> dict[str, int]:
        purged: dict[str, int] = {}
        with short_connection(app, write=True) as conn:
            for name in names:
                channel = conn.channel()
                try:
                    purged[name] = int(channel.queue_purge(name) or 0)
                except conn.channel_errors:
                    purged[name] = 0  # no such queue: nothing was ever sent to it
                finally:
                    _close_quietly(channel)
        return purged

    def make_schedule_state(self) -> Any:  # a ScheduleState (annotated so in QueueKind)
        # Beside the job records, in the Redis job store (RabbitMQ keeps messages only).
        from unified_jobs.adapters.celery.kinds.redis_schedules import RedisScheduleState

        assert self.queue.store_uri is not None  # the config requires it
        return RedisScheduleState(
            self.queue.store_uri,
            connect_timeout=self.queue.connect_timeout_sec,
            read_timeout=self.queue.read_timeout_sec,
        )


def _ready(conn: Any, name: str) -> int:
    """Messages ready in a queue (a passive declare; 0 for a queue that does not exist)."""
    channel = conn.channel()
    try:
        return int(channel.queue_declare(name, passive=True).message_count)
    except conn.channel_errors:
        return 0
    finally:
        _close_quietly(channel)


def _close_quietly(channel: Any) -> None:
    with contextlib.suppress(Exception):  # closed by the broker already (a 404)
        channel.close()


def _reserved_by_workers(app: Any, names: set[str], timeout: float = 1.0) -> dict[str, int]:
    """Jobs the live workers hold unacked (running, prefetched, waiting for their eta), by
    queue: RabbitMQ tells this only through its management plugin, the workers always."""
    inspect = app.control.inspect(timeout=timeout)
    with ThreadPoolExecutor(max_workers=3) as pool:
        replies = list(
            pool.map(lambda what: getattr(inspect, what)() or {}, ("active", "reserved", "scheduled"))
        )
    counts: dict[str, int] = {}
    for reply in replies:
        for requests in cast(dict[str, list[dict[str, Any]]], reply).values():
            for request in requests:
                request = request.get("request", request)  # scheduled ones are wrapped
                queue = (request.get("delivery_info") or {}).get("routing_key")
                if queue in names:
                    counts[queue] = counts.get(queue, 0) + 1
    return counts
