"""Remote control on the SQL queue: shared exchange bindings and the control-message table.

kombu's virtual transports keep exchange bindings in each process's memory, so a fanout or
topic exchange only reaches the queues bound in the publishing process. Celery's remote
control needs more: ``celery inspect`` publishes to the fanout exchange ``celery.pidbox``
that every worker's own queue is bound to, workers reply through the direct exchange
``reply.celery.pidbox`` to a queue the client bound, and Flower hears task events through
the topic exchange ``celeryev``. So, as kombu's Redis transport does with its
``_kombu.binding.*`` sets, bindings to fanout and topic exchanges, and every binding of a
control queue, are also written to ``<prefix>bindings``, where any process finds them.

A *control queue* is one declared ``auto_delete`` or ``exclusive``: it lives as long as its
consumer, as Celery's pidbox, reply and event queues (and ``celery.Broadcast`` queues) do.
Its messages are not jobs. They go to ``<prefix>control_messages``, never to the jobs table
that the ``jobs`` command, the dashboard and the metrics read. They are delivered at most
once: a consumer deletes the rows it takes (a crash loses them, as with Redis' pub/sub or an
AMQP ``no_ack`` consumer). A row expires with its queue's ``x-message-ttl`` (or the message's
``expiration``). A control queue's binding expires unless its consumer renews it
(``touch``), and a consumer deletes its auto-delete queues when it closes; ``sweep`` deletes
expired bindings, expired messages, and the messages of queues nobody binds any more, so a
dead consumer's queue does not pile up rows.

The SQL is in this module (not ``queries.py``), the DDL in ``schema.py`` (step 5).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from time import monotonic
from typing import Any, NamedTuple

from sqlalchemy import (
    BindParameter,
    Delete,
    Engine,
    Select,
    Update,
    bindparam,
    delete,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row
from sqlalchemy.sql.dml import Insert, ReturningDelete

from unified_jobs.adapters.sql import fork_guard
from unified_jobs.adapters.sql.leases import aware, utcnow
from unified_jobs.adapters.sql.schema import Tables

__all__ = [
    "CONTROL_TAG_PREFIX",
    "TOPIC_CACHE_SEC",
    "Broadcast",
    "ControlSpec",
    "SharedBinding",
    "control_spec",
]

logger = logging.getLogger(__name__)

#: Delivery tags of control messages start with this (a job's tag is "<row id>.<attempts>").
CONTROL_TAG_PREFIX = "ctl."

#: A control queue's binding lives at least this long without being renewed (seconds); its
#: consumer renews it every third of that. A dead consumer's queue (a SIGKILLed worker, Flower
#: stopped without closing) gets messages until then, which expire and are swept.
MIN_BINDING_TTL = 30.0

#: A message of a queue that no binding names is deleted once it is this old (seconds): the
#: grace covers a publish racing the queue's first bind.
ORPHAN_GRACE = 60.0

#: How long a topic exchange's bindings are cached for publishing (seconds). Task events are
#: published through one (several per job), so each must not cost a query; a consumer that
#: binds is reached at most this much later. Fanout (remote control) and direct lookups are
#: read fresh: they are rare, and a reply must reach a queue bound a moment ago.
TOPIC_CACHE_SEC = 1.0


@dataclass(frozen=True)
class ControlSpec:
    """How a control queue was declared: its messages' TTL and its own ``x-expires`` (seconds);
    ``auto_delete``: it goes when its consumer's channel closes."""

    message_ttl: float | None = None
    expires: float | None = None
    auto_delete: bool = True


def _ms_to_sec(value: Any) -> float | None:
    try:
        ms = float(value)
    except (TypeError, ValueError):
        return None
    return ms / 1000.0 if ms > 0 else None


def control_spec(declare: Mapping[str, Any]) -> ControlSpec | None:
    """The spec of a queue from ``queue_declare``'s keyword arguments, or None for a job queue.

    A queue declared ``auto_delete`` or ``exclusive`` belongs to its consumer (Celery's pidbox,
    reply and event queues): its messages are control messages. Any other queue, however
    declared (durable or not, with ``x-expires`` or not), holds jobs.
    """
    if not (declare.get("auto_delete") or declare.get("exclusive")):
        return None
    arguments = declare.get("arguments") or {}
    return ControlSpec(
        message_ttl=_ms_to_sec(arguments.get("x-message-ttl")),
        expires=_ms_to_sec(arguments.get("x-expires")),
    )


@dataclass(frozen=True)
class BroadcastQueries:
    """The statements on the bindings and control-message tables; parameters per comment."""

    # executemany of {exchange, routing_key, queue, pattern, control, message_ttl, expires_at, now}
    bind: Insert
    # exchange, routing_key, queue
    unbind: Delete
    # queue: every binding of the queue
    unbind_queue: Delete
    # exchange, now -> rows (routing_key, pattern, queue, control, message_ttl) of live bindings
    table: Select[Any]
    # queues (list), until: renew the expiring bindings of these queues
    touch: Update
    # executemany of {queue, payload, now, expires_at}
    put: Insert
    # queues (list), limit -> rows (id, queue, payload, expires_at), deleted
    take: ReturningDelete[Any]
    # queue, now -> the number of live messages
    size: Select[Any]
    # queue -> rowcount
    purge: Delete
    # now -> rowcount: bindings past their expiry
    sweep_bindings: Delete
    # now -> rowcount: messages past their expiry
    sweep_expired: Delete
    # before -> rowcount: messages older than ``before`` of queues no binding names
    sweep_orphans: Delete


@lru_cache(maxsize=64)
def broadcast_queries_for(t: Tables, dialect: str) -> BroadcastQueries:
    """The statements for table set ``t`` on ``dialect`` ("postgresql" or "sqlite")."""
    b, m = t.bindings, t.control
    now: BindParameter[Any] = bindparam("now")
    live = b.c.expires_at.is_(None) | (b.c.expires_at > now)
    dialect_insert = pg_insert if dialect == "postgresql" else sqlite_insert
    upsert = dialect_insert(b).values(
        exchange=bindparam("exchange"),
        routing_key=bindparam("routing_key"),
        queue=bindparam("queue"),
        pattern=bindparam("pattern"),
        control=bindparam("control"),
        message_ttl=bindparam("message_ttl"),
        expires_at=bindparam("expires_at"),
        updated_at=now,
    )
    bind = upsert.on_conflict_do_update(
        index_elements=[b.c.exchange, b.c.routing_key, b.c.queue],
        set_={
            "pattern": upsert.excluded.pattern,
            "control": upsert.excluded.control,
            "message_ttl": upsert.excluded.message_ttl,
            "expires_at": upsert.excluded.expires_at,
            "updated_at": upsert.excluded.updated_at,
        },
    )
    pick = select(m.c.id).where(m.c.queue.in_(bindparam("queues", expanding=True)))
    pick = pick.order_by(m.c.id).limit(bindparam("limit"))
    if dialect == "postgresql":
        pick = pick.with_for_update(skip_locked=True)  # two consumers of one queue pass each other
    unexpired = m.c.expires_at.is_(None) | (m.c.expires_at > now)
    return BroadcastQueries(
        bind=bind,
        unbind=delete(b).where(
            b.c.exchange == bindparam("exchange"),
            b.c.routing_key == bindparam("routing_key"),
            b.c.queue == bindparam("queue"),
        ),
        unbind_queue=delete(b).where(b.c.queue == bindparam("queue")),
        table=select(b.c.routing_key, b.c.pattern, b.c.queue, b.c.control, b.c.message_ttl).where(
            b.c.exchange == bindparam("exchange"), live
        ),
        touch=update(b)
        .where(b.c.queue.in_(bindparam("queues", expanding=True)), b.c.expires_at.is_not(None))
        .values(expires_at=bindparam("until")),
        put=m.insert().values(
            queue=bindparam("queue"),
            payload=bindparam("payload"),
            created_at=now,
            expires_at=bindparam("expires_at"),
        ),
        take=delete(m)
        .where(m.c.id.in_(pick.scalar_subquery()))
        .returning(m.c.id, m.c.queue, m.c.payload, m.c.expires_at),
        size=select(func.count()).select_from(m).where(m.c.queue == bindparam("queue"), unexpired),
        purge=delete(m).where(m.c.queue == bindparam("queue")),
        sweep_bindings=delete(b).where(b.c.expires_at.is_not(None), b.c.expires_at < now),
        sweep_expired=delete(m).where(m.c.expires_at.is_not(None), m.c.expires_at < now),
        sweep_orphans=delete(m).where(
            m.c.created_at < bindparam("before"), ~exists().where(b.c.queue == m.c.queue)
        ),
    )


class SharedBinding(NamedTuple):
    """One row of the shared bindings: kombu's (routing_key, pattern, queue), and the queue's
    spec if it is a control queue (None: it holds jobs)."""

    routing_key: str
    pattern: str | None
    queue: str
    spec: ControlSpec | None


@dataclass(frozen=True)
class _Cached:
    at: float
    rows: list[SharedBinding]


#: The control queues declared in this process, per table set (database URL, table prefix):
#: any connection of the process may publish to one by name, not only the one that declared it.
_declared: dict[tuple[str, str], dict[str, ControlSpec]] = {}


class Broadcast:
    """The control-message side of one transport (one per kombu connection); thread-safe.

    ``key`` names the table set (database URL, table prefix); ``binding_ttl`` is how long a
    control queue's binding lives without renewal, at least.
    """

    def __init__(
        self, engine: Engine, tables: Tables, dialect: str, binding_ttl: float, key: tuple[str, str]
    ) -> None:
        self.engine = engine
        self.tables = tables
        self.dialect = dialect
        self.q = broadcast_queries_for(tables, dialect)
        self.binding_ttl = max(binding_ttl, MIN_BINDING_TTL)
        self._local = _declared.setdefault(key, {})
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self._peek_sql: dict[int, str] = {}
        self._peek: sqlite3.Connection | None = None
        self._peek_pid = 0
        self._peek_lock = threading.Lock()

    # -- which queues are control queues -------------------------------------------------

    def declare(self, queue: str, spec: ControlSpec) -> None:
        """``queue`` was declared in this process as a control queue."""
        self._local[queue] = spec

    def declared_control(self, queue: str) -> ControlSpec | None:
        """The queue's spec if it was declared in this process as a control queue."""
        return self._local.get(queue)

    def ttl_of(self, spec: ControlSpec) -> float:
        """How long a binding of a queue with ``spec`` lives without renewal: its ``x-expires``
        (how long AMQP keeps an unused queue), and never less than ``binding_ttl``."""
        return max(self.binding_ttl, spec.expires or 0.0)

    # -- bindings ------------------------------------------------------------------------

    def bind(self, exchange: str, routing_key: str, pattern: str | None, queue: str) -> None:
        """Share one binding: a control queue's expires unless renewed; another's is permanent."""
        spec = self._local.get(queue)
        now = utcnow()
        params = {
            "exchange": exchange,
            "routing_key": routing_key or "",
            "queue": queue,
            "pattern": pattern,
            "control": spec is not None,
            "message_ttl": spec.message_ttl if spec is not None else None,
            "expires_at": now + timedelta(seconds=self.ttl_of(spec)) if spec is not None else None,
            "now": now,
        }
        with self.engine.begin() as conn:
            conn.execute(self.q.bind, params)
        with self._lock:
            self._cache.pop(exchange, None)

    def unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                self.q.unbind, {"exchange": exchange, "routing_key": routing_key or "", "queue": queue}
            )
        with self._lock:
            self._cache.pop(exchange, None)

    def table(self, exchange: str, max_age: float = 0.0) -> list[SharedBinding]:
        """The live shared bindings of ``exchange``, read from the database unless a read
        younger than ``max_age`` seconds is cached."""
        if max_age > 0:
            cached = self._cache.get(exchange)
            if cached is not None and monotonic() - cached.at < max_age:
                return cached.rows
        with self.engine.begin() as conn:
            found = conn.execute(self.q.table, {"exchange": exchange, "now": utcnow()}).all()
        rows = [
            SharedBinding(
                r.routing_key,
                r.pattern,
                r.queue,
                ControlSpec(message_ttl=r.message_ttl) if r.control else None,
            )
            for r in found
        ]
        if max_age > 0:
            with self._lock:
                self._cache[exchange] = _Cached(monotonic(), rows)
        return rows

    def touch(self, queues: Sequence[str]) -> None:
        """Renew the bindings of control queues that are being consumed."""
        specs = [s for q in queues if (s := self._local.get(q)) is not None]
        if not specs:
            return
        until = utcnow() + timedelta(seconds=min(self.ttl_of(s) for s in specs))
        with self.engine.begin() as conn:
            conn.execute(self.q.touch, {"queues": list(queues), "until": until})

    def delete_queue(self, queue: str) -> None:
        """Drop a control queue: its bindings and its messages; it is no longer one here."""
        with self.engine.begin() as conn:
            conn.execute(self.q.unbind_queue, {"queue": queue})
            conn.execute(self.q.purge, {"queue": queue})
        with self._lock:
            self._cache.clear()
        self._local.pop(queue, None)

    # -- messages ------------------------------------------------------------------------

    def put(self, items: Sequence[tuple[str, ControlSpec | None, dict[str, Any]]]) -> None:
        """Write each (control queue, its spec, kombu message), in one transaction. A row
        expires with its queue's ``x-message-ttl`` or the message's ``expiration``, whichever
        is sooner."""
        now = utcnow()
        params = []
        for queue, spec, message in items:
            per_message = _ms_to_sec((message.get("properties") or {}).get("expiration"))
            ttls = [t for t in (per_message, spec.message_ttl if spec else None) if t]
            expires_at = now + timedelta(seconds=min(ttls)) if ttls else None
            params.append(
                {"queue": queue, "payload": json.dumps(message), "now": now, "expires_at": expires_at}
            )
        if params:
            with self.engine.begin() as conn:
                conn.execute(self.q.put, params)

    def pending(self, queues: Sequence[str]) -> bool:
        """SQLite: whether any message waits for ``queues``, read without a write transaction.

        Every SQLAlchemy transaction on SQLite is ``BEGIN IMMEDIATE`` (engine.py), which takes
        the database's write lock; an idle consumer polls often, so it looks first with a plain
        read (WAL: it never waits for a writer), and only takes (a write) when there is something.
        """
        sql = self._peek_sql.get(len(queues))
        if sql is None:
            marks = ", ".join("?" for _ in queues)
            sql = f"SELECT 1 FROM {self.tables.control.name} WHERE queue IN ({marks}) LIMIT 1"
            self._peek_sql[len(queues)] = sql
        # The fork guard first, and left last: a fork never finds the lock held.
        with fork_guard.guard.held(), self._peek_lock:
            # A connection of its own, outside the engine's pool: taking a pooled one ten times
            # a second costs more than the read, and makes the claims alternate connections.
            if self._peek is None or self._peek_pid != os.getpid():
                path = self.engine.url.database or ""
                self._peek = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                self._peek_pid = os.getpid()
            return self._peek.execute(sql, list(queues)).fetchone() is not None

    def close(self) -> None:
        """Close the SQLite peek connection, if one was opened (the transport is closing)."""
        with fork_guard.guard.held(), self._peek_lock:
            if self._peek is not None and self._peek_pid == os.getpid():
                self._peek.close()
            self._peek = None

    def take(self, queues: Sequence[str], limit: int) -> tuple[list[Row[Any]], bool]:
        """Take (delete) up to ``limit`` messages of ``queues``, oldest first; the expired ones
        are deleted but not returned. Also says whether that was all (fewer than ``limit``)."""
        now = utcnow()
        with self.engine.begin() as conn:
            rows = list(conn.execute(self.q.take, {"queues": list(queues), "limit": limit}).all())
        rows.sort(key=lambda r: r.id)  # RETURNING does not keep the subquery's order
        live = [r for r in rows if r.expires_at is None or aware(r.expires_at) > now]
        return live, len(rows) < limit

    def size(self, queue: str) -> int:
        with self.engine.begin() as conn:
            n: int = conn.execute(self.q.size, {"queue": queue, "now": utcnow()}).scalar_one()
            return n

    def purge(self, queue: str) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(self.q.purge, {"queue": queue}).rowcount)

    def sweep(self) -> int:
        """Delete expired bindings, expired messages, and old messages of unbound queues."""
        now = utcnow()
        with self.engine.begin() as conn:
            gone = int(conn.execute(self.q.sweep_bindings, {"now": now}).rowcount)
            dropped = int(conn.execute(self.q.sweep_expired, {"now": now}).rowcount)
            before = now - timedelta(seconds=ORPHAN_GRACE)
            orphans = int(conn.execute(self.q.sweep_orphans, {"before": before}).rowcount)
        if gone or orphans:
            logger.info(
                "control queues: %d expired binding(s) removed, %d message(s) of unbound queues deleted",
                gone,
                orphans,
            )
        return gone + dropped + orphans
