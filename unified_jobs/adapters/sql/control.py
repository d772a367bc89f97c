"""The remote-control half of the SQL transport's channel: routing through shared bindings,
and consuming control queues.

kombu's virtual channel routes fanout and topic exchanges through the bindings of the
publishing process only. ``ControlChannel`` routes them (and direct lookups that find nothing
here, as a worker's reply to ``celery inspect``) through the bindings every process shares,
and sends what is for a control queue to the control-message table instead of the jobs table;
it also takes its control queues' messages, renews their bindings and sweeps after dead
consumers. The SQL is in ``broadcast.py``; ``channel.Channel`` builds on this class.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

from kombu.transport import virtual
from kombu.transport.base import to_rabbitmq_queue_arguments

from unified_jobs.adapters.sql.broadcast import (
    CONTROL_TAG_PREFIX,
    TOPIC_CACHE_SEC,
    ControlSpec,
    SharedBinding,
    control_spec,
)
from unified_jobs.adapters.sql.wakeup import poke_local

if TYPE_CHECKING:
    from unified_jobs.adapters.sql.transport import Transport

__all__ = ["ControlChannel"]

logger = logging.getLogger(__name__)

#: Exchange types whose bindings every process must see (kombu keeps bindings per process).
_SHARED_EXCHANGE_TYPES = ("fanout", "topic")

#: How often a consumer of control queues deletes expired bindings and messages (seconds);
#: the first sweep waits a little, so a short-lived client (``celery inspect``) never sweeps.
SWEEP_INTERVAL = 30.0
FIRST_SWEEP_AFTER = 5.0

_BAD_MESSAGE_ERRORS = (ValueError, TypeError, KeyError)


def _forget_local(state: Any, queue: str) -> None:
    """Drop ``queue`` from a transport's in-memory bindings (kombu's ``BrokerState``), so that
    a new declare binds it again; kombu's ``queue_delete`` leaves it in the exchanges' tables."""
    state.queue_bindings_delete(queue)
    for declared in state.exchanges.values():
        table = declared.get("table")
        if table:
            table[:] = [m for m in table if m[2] != queue]


class ControlChannel(virtual.Channel):
    """kombu's virtual channel with shared fanout/topic bindings and control queues."""

    connection: Transport
    #: Fanout exchanges work (remote control): bindings are shared through the database.
    supports_fanout = True

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)  # type: ignore[no-untyped-call]
        self.options = connection.options
        self.broadcast = connection.broadcast
        # The consumed queues, split: jobs are claimed from the jobs table, control messages
        # taken from the control table (see _sort_queues).
        self._job_queues: list[str] = []
        self._control_queues: list[str] = []
        #: Control queues this channel consumed that are auto-delete: dropped when it closes.
        self._auto_delete: set[str] = set()
        #: Control queues found by this channel's last shared lookup (``get_table``): where a
        #: publish that follows it (kombu looks up, then puts) writes control messages.
        self._routed: dict[str, ControlSpec] = {}
        self._control_seen = -1  # the transport's control_gen at our last poll
        self._control_next = 0.0  # monotonic time of the next control poll without a wake-up
        self._touch_next = 0.0
        self._sweep_next = monotonic() + FIRST_SWEEP_AFTER

    @property
    def next_control_poll(self) -> float | None:
        """When (monotonic) this channel polls its control queues next, if it consumes any."""
        return self._control_next if self._control_queues else None

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        """Queues are implicit: a row names its queue. A control queue is remembered as one."""
        spec = control_spec(kwargs)
        if spec is not None:
            self.broadcast.declare(queue, spec)

    def prepare_queue_arguments(self, arguments: Any, **kwargs: Any) -> Any:
        """``expires``/``message_ttl`` as ``x-expires``/``x-message-ttl``, as on RabbitMQ and
        Redis (kombu's virtual default drops them): control queues use them."""
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def _control_spec(self, queue: str) -> ControlSpec | None:
        """The queue's spec if it is a control queue (declared in this process, or bound by
        another one and just looked up), else None: a job queue."""
        return self.broadcast.declared_control(queue) or self._routed.get(queue)

    def _put_control(self, queues: list[tuple[str, ControlSpec]], message: dict[str, Any]) -> None:
        self.broadcast.put([(queue, spec, message) for queue, spec in queues])
        poke_local(self.connection.local_key, control=[queue for queue, _ in queues])

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any) -> None:
        """A copy for every queue bound to ``exchange`` in any process (kombu's fanout hook)."""
        queues = sorted({queue for _, _, queue in self.get_table(exchange)})
        control = [(q, spec) for q in queues if (spec := self._control_spec(q)) is not None]
        if control:
            self._put_control(control, message)
        jobs = set(queues) - {q for q, _ in control}
        for queue in sorted(jobs):  # a durable queue bound to a fanout exchange: a job each
            self._put(queue, message, **kwargs)  # type: ignore[no-untyped-call]

    def get_table(self, exchange: str) -> list[tuple[str, str | None, str]]:
        """The bindings of ``exchange``: this process's, and for a fanout or topic exchange
        those of every process too (remote control). A topic exchange's shared bindings are
        cached briefly (task events go through one); a fanout's are read fresh."""
        kind = self._type_of(exchange).type
        if kind not in _SHARED_EXCHANGE_TYPES:
            table: list[tuple[str, str | None, str]] = super().get_table(exchange)  # type: ignore[no-untyped-call]
            return table
        shared = self._route(
            self.broadcast.table(exchange, max_age=TOPIC_CACHE_SEC if kind == "topic" else 0.0)
        )
        local = self._local_table(exchange)
        return list(dict.fromkeys([*local, *shared])) if local else shared

    def _route(self, rows: list[SharedBinding]) -> list[tuple[str, str | None, str]]:
        """kombu's rows of a shared lookup; its control queues are noted for the puts to come."""
        self._routed = {r.queue: r.spec for r in rows if r.spec is not None}
        return [(r.routing_key, r.pattern, r.queue) for r in rows]

    def _type_of(self, exchange: str) -> Any:
        """kombu's exchange type object of ``exchange`` (direct if it was never declared here)."""
        return self.typeof(exchange)  # type: ignore[no-untyped-call]

    def _local_table(self, exchange: str | None) -> list[Any]:
        """This process's bindings of ``exchange`` (kombu's list itself, or a new empty one)."""
        declared = self.state.exchanges.get(exchange) if exchange else None
        if not declared:
            return []
        table: list[Any] = declared.get("table") or []
        return table

    def _lookup(self, exchange: str, routing_key: str, default: str | None = None) -> Any:
        """kombu's lookup; a direct exchange with no match here is looked up in the shared
        bindings too: that is how a worker's reply reaches ``celery inspect``'s reply queue."""
        found = super()._lookup(exchange, routing_key, default)  # type: ignore[no-untyped-call]
        if found or not exchange:
            return found
        kind = self._type_of(exchange)
        if kind.type != "direct":
            return found
        return kind.lookup(self._route(self.broadcast.table(exchange)), exchange, routing_key, default)

    def _shares(self, exchange: str | None, queue: str) -> bool:
        """Whether a binding of ``queue`` to ``exchange`` goes to the shared bindings table."""
        if self.broadcast.declared_control(queue) is not None:
            return True
        return exchange is not None and self._type_of(exchange).type in _SHARED_EXCHANGE_TYPES

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str | None, queue: str) -> None:
        """kombu's hook after a bind (``supports_fanout``): share it if other processes need it.
        A job queue bound to a direct exchange stays local, as before: nothing on a publish."""
        if self._shares(exchange, queue):
            self.broadcast.bind(exchange, routing_key, pattern, queue)

    def queue_unbind(
        self,
        queue: str,
        exchange: str | None = None,
        routing_key: str = "",
        arguments: Any = None,
        **kwargs: Any,
    ) -> None:
        # kombu's own edits the list get_table returns, which for a shared exchange is a copy.
        self.state.binding_delete(queue, exchange, routing_key)
        local = self._local_table(exchange)
        if local and exchange:
            meta = self._type_of(exchange).prepare_bind(queue, exchange, routing_key, arguments)
            local[:] = [m for m in local if m != meta]
        if exchange and self._shares(exchange, queue):
            self.broadcast.unbind(exchange, routing_key, queue)

    def _delete(
        self, queue: str, exchange: str, routing_key: str, pattern: str | None, *args: Any, **kwargs: Any
    ) -> None:
        """kombu's ``queue_delete`` calls this for each binding of ``queue`` in this process
        (a control queue's bindings and messages go at once, in ``queue_delete``)."""
        if self.broadcast.declared_control(queue) is not None:
            return
        if self._shares(exchange, queue):
            self.broadcast.unbind(exchange, routing_key, queue)
        super()._delete(queue, exchange, routing_key, pattern, *args, **kwargs)  # type: ignore[no-untyped-call]

    def queue_delete(
        self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any
    ) -> None:
        if if_empty and self._size(queue):  # type: ignore[no-untyped-call]
            return
        control = self.broadcast.declared_control(queue) is not None
        super().queue_delete(queue, if_unused=if_unused, if_empty=False, **kwargs)  # type: ignore[no-untyped-call]
        if control:
            self.broadcast.delete_queue(queue)
            _forget_local(self.state, queue)

    def _sort_queues(self) -> None:
        active = sorted(set(self._active_queues))
        self._control_queues = [q for q in active if self.broadcast.declared_control(q) is not None]
        self._job_queues = [q for q in active if q not in self._control_queues]
        self._control_seen = -1  # a new control queue: poll it at once
        self.connection.watch_control()

    def _drop_auto_delete(self, transport: Transport | None) -> None:
        """Delete the auto-delete control queues this channel consumed (AMQP drops them when
        their consumer goes), so that broadcasts stop writing rows for them at once."""
        for queue in sorted(self._auto_delete):
            try:
                self.broadcast.delete_queue(queue)
            except Exception:  # the database may be what closed us: the binding expires instead
                logger.warning(
                    "could not delete control queue %r at close; its binding will expire",
                    queue,
                    exc_info=True,
                )
            if transport is not None:
                _forget_local(transport.state, queue)
        self._auto_delete.clear()

    # --- control messages ---------------------------------------------------------------

    def _control_due(self) -> bool:
        """Poll the control queues when woken for them (NOTIFY, or a publish in this process),
        and otherwise every ``control_poll_sec``."""
        gen = self.connection.control_gen
        now = monotonic()
        if gen == self._control_seen and now < self._control_next:
            return False
        self._control_seen = gen
        self._control_next = now + self.connection.control_poll_sec
        return True

    def _deliver_control(self, deliver: Callable[..., Any]) -> bool:
        """Deliver waiting control messages; False if there were none."""
        queues = self._control_queues
        if self.connection.dialect == "sqlite" and not self.broadcast.pending(queues):
            return False
        batch = self._take_control(queues, self.options.batch_size)
        for i, (payload, queue) in enumerate(batch):
            try:
                deliver(payload, queue)
            except BaseException:
                rest = batch[i + 1 :]
                if rest:  # not delivered: back to their queues, for the next drain
                    self.broadcast.put([(q, self.broadcast.declared_control(q), p) for p, q in rest])
                raise
        return bool(batch)

    def _take_control(self, queues: list[str], limit: int) -> list[tuple[dict[str, Any], str]]:
        rows, complete = self.broadcast.take(queues, limit)
        if not complete:
            self._control_next = 0.0  # more are waiting
        batch = []
        for row in rows:
            try:
                payload = json.loads(row.payload)
                props = payload["properties"]
                if not isinstance(props, dict):
                    raise TypeError("'properties' is not an object")
            except _BAD_MESSAGE_ERRORS as exc:
                logger.error(
                    "control message %s for queue %r dropped: it is not a kombu message (%s: %s)",
                    row.id,
                    row.queue,
                    type(exc).__name__,
                    exc,
                )
                continue
            props["delivery_tag"] = f"{CONTROL_TAG_PREFIX}{row.id}"
            batch.append((payload, row.queue))
        return batch

    def _control_upkeep(self) -> None:
        """From the heartbeat thread: renew the bindings of the control queues we consume, and
        now and then sweep expired bindings and messages."""
        queues = list(self._control_queues)
        if not queues:
            return
        now = monotonic()
        if now >= self._touch_next:
            self.broadcast.touch(queues)
            self._touch_next = now + self.broadcast.binding_ttl / 3
        if now >= self._sweep_next:
            self._sweep_next = now + SWEEP_INTERVAL
            self.broadcast.sweep()
