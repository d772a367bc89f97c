"""The SQL queue's lease engine: enqueue, claim, settle, heartbeat and reap job rows.

Plain SQLAlchemy, no kombu: ``channel.py`` is the thin kombu transport over it, and anything
else (a dashboard, a scheduler, a non-Celery consumer) can drive it the same way.

A ``Leases`` belongs to one owner (``host:pid:random``). ``claim`` marks ready rows
``processing`` with a lease expiry and ``attempts + 1``; the owner holds each claim under a
tag ``"<row id>.<attempts>"`` (so two claims of one row, after a lost lease, never collide)
until it settles it: ack (``completed`` or deleted), reject (``failed``, with the error noted
for it), supersede (deleted: a retry was published as a new row), cancel (``cancelled``: it
stopped on a cancel request) or requeue (``queued``).
``heartbeat`` renews every held lease and requeues the rows whose lease expired elsewhere.
Acks can be batched: ``queue_ack`` holds them until ``flush_acks`` writes them in one
transaction (the claim stays leased, and heartbeated, until then).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from sqlalchemy import Engine
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from unified_jobs.adapters.sql.options import SqlOptions
    from unified_jobs.adapters.sql.queries import Queries

__all__ = ["Action", "Claim", "Leases", "utcnow"]

logger = logging.getLogger(__name__)

_UTC = timezone.utc

#: What became of a claimed job.
Action = Literal["ack", "reject", "requeue", "supersede", "cancel"]


def utcnow() -> datetime:
    return datetime.now(_UTC)


def aware(value: datetime) -> datetime:
    # SQLite hands datetimes back naive; we only ever store UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=_UTC)


class Claim(NamedTuple):
    id: int
    attempts: int


class Leases:
    """The claims of one owner on one jobs table; see the module docstring.

    ``on_free`` is called whenever a claim is settled (a consumer slot is free again).
    """

    def __init__(
        self,
        engine: Engine,
        queries: Queries,
        options: SqlOptions,
        owner: str,
        on_free: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.q = queries
        self.options = options
        self.owner = owner
        self.on_free = on_free
        self._claims: dict[str, Claim] = {}
        self._lock = threading.Lock()
        #: Why a held job failed (noted just before the consumer acks or rejects it).
        self._failure_notes: dict[str, str] = {}
        #: Held jobs republished for a retry (their ack deletes the old row).
        self._superseded: set[str] = set()
        #: Held jobs that stopped on a cancel request (their ack writes them cancelled).
        self._cancelled: set[str] = set()
        self._acks: list[str] = []
        #: After an empty claim: when the earliest queued job of those queues is due (or None).
        self.next_due: datetime | None = None

    # -- writing rows --------------------------------------------------------------------

    def _begin_fast(self, conn: Connection) -> None:
        if self.q.async_commit is not None and self.options.async_commit:
            conn.execute(self.q.async_commit)

    def _write(self, stmt: Any, params: list[dict[str, Any]]) -> int:
        """Run ``stmt`` for each params dict in one transaction; rows changed (-1 if unknown)."""
        if not params:
            return 0
        with self.engine.begin() as conn:
            self._begin_fast(conn)
            return int(conn.execute(stmt, params).rowcount)

    def _params(self, claim: Claim, **extra: Any) -> dict[str, Any]:
        ident = {"job_id": claim.id, "claim_attempts": claim.attempts, "owner": self.owner}
        return {**ident, "now": utcnow(), **extra}

    def enqueue(
        self,
        *,
        queue: str,
        payload: str,
        task_name: str | None,
        task_id: str | None,
        priority: int,
        run_at: datetime,
        now: datetime,
        unique_key: str | None = None,
        unique_until: datetime | None = None,
        connection: Connection | None = None,
        refuse: bool = True,
    ) -> str | None:
        """Insert one ``queued`` row, committed at once, or in ``connection``'s transaction.

        With a ``unique_key``: nothing is inserted while another job's queued or processing row
        holds it, and that job's task id is returned. A key past its ``unique_until``, or held by
        an earlier row of the same task id (a retry being republished), is taken over. Without
        ``refuse`` (a publish nobody is there to tell, such as a worker republishing a retry),
        a key held by another job is not taken and the row is inserted without one: a message
        is never dropped.
        """
        params = {
            "queue": queue,
            "task_name": task_name,
            "task_id": task_id,
            "payload": payload,
            "priority": priority,
            "run_at": run_at,
            "now": now,
        }
        if connection is not None:
            return self._insert(connection, params, unique_key, unique_until, refuse)
        with self.engine.begin() as conn:
            return self._insert(conn, params, unique_key, unique_until, refuse)

    def _insert(
        self, conn: Connection, params: dict[str, Any], key: str | None, until: datetime | None, refuse: bool
    ) -> str | None:
        if key is None:
            conn.execute(self.q.enqueue, params)
            return None
        params = {**params, "unique_key": key, "unique_until": until}
        for _ in range(5):
            if conn.execute(self.q.enqueue_unique, params).first() is not None:
                return None
            holder = conn.execute(self.q.unique_holder, {"unique_key": key}).first()
            if holder is None:
                continue  # it ended in between: try again
            expired = holder.unique_until is not None and aware(holder.unique_until) <= params["now"]
            if holder.task_id != params["task_id"] and not expired:
                if refuse:
                    return str(holder.task_id)
                conn.execute(self.q.enqueue, {k: v for k, v in params.items() if not k.startswith("unique")})
                return None
            conn.execute(self.q.unique_free, {"holder_id": holder.id})
        raise RuntimeError(f"unique key {key!r} changed hands five times during one enqueue")

    def purge(self, queue: str) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(self.q.purge, {"queue": queue}).rowcount)

    def size(self, queue: str) -> int:
        with self.engine.begin() as conn:
            n: int = conn.execute(self.q.size, {"queue": queue}).scalar_one()
            return n

    # -- claiming ------------------------------------------------------------------------

    def claim(self, queues: Sequence[str], limit: int) -> list[Row[Any]]:
        """Claim up to ``limit`` ready rows of ``queues``, best first (priority, due time, id).

        The rows are leased but not held yet: ``hold`` each one that will be delivered,
        ``fail_unreadable`` the others. With nothing ready, ``next_due`` says when to look again.
        """
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
                self.next_due = aware(due) if isinstance(due, datetime) else None
                return []
        self.next_due = None
        # RETURNING does not keep the subquery's order.
        rows.sort(key=lambda r: (-r.priority, aware(r.run_at), r.id))
        return rows

    def hold(self, row: Row[Any]) -> str:
        """Hold a claimed row (heartbeat it until settled); returns its tag."""
        tag = f"{row.id}.{row.attempts}"
        with self._lock:
            self._claims[tag] = Claim(row.id, row.attempts)
        return tag

    def fail_unreadable(self, row: Row[Any], reason: str) -> None:
        """Fail a claimed row that cannot be delivered at all."""
        logger.error("job %s in queue %r marked failed: %s", row.id, row.queue, reason)
        self._write(self.q.fail, [self._params(Claim(row.id, row.attempts), error=reason)])

    # -- settling ------------------------------------------------------------------------

    def note_failure(self, tag: str, error: str) -> None:
        """Record why a held job failed; its coming ack or reject writes the row failed, with
        this as its ``last_error``."""
        with self._lock:
            if tag in self._claims:
                self._failure_notes[tag] = error[:16000]

    def note_superseded(self, tag: str) -> None:
        """The job was republished for a retry: its coming ack deletes this row."""
        with self._lock:
            if tag in self._claims:
                self._superseded.add(tag)

    def note_cancelled(self, tag: str) -> None:
        """The job stopped on a cancel request: its coming ack writes the row cancelled."""
        with self._lock:
            if tag in self._claims:
                self._cancelled.add(tag)

    def resolve(self, tag: str, action: Action) -> Action:
        """``action`` as it will be written: a noted failure's ack is a reject (a failed job is
        acked, as Celery does, and its row says failed); a superseded job's ack deletes it; a
        cancelled job's ack writes it cancelled."""
        with self._lock:
            if action == "ack" and tag in self._failure_notes:
                return "reject"
            if action == "ack" and tag in self._superseded:
                self._superseded.discard(tag)
                return "supersede"
            if action == "ack" and tag in self._cancelled:
                self._cancelled.discard(tag)
                return "cancel"
        return action

    def queue_ack(self, tag: str) -> bool:
        """Hold an ack for the next ``flush_acks``; False if the tag is not held."""
        with self._lock:
            if tag not in self._claims:
                return False
            self._acks.append(tag)
        return True

    def settle(self, tag: str, action: Action) -> None:
        """Write what became of one held job now."""
        with self._lock:
            claims = self._pop([tag])
            note = self._failure_notes.pop(tag, None)
        self._write_outcome(claims, action, error=note)

    def flush_acks(self) -> None:
        """Write the held acks now, in one transaction."""
        with self._lock:
            tags, self._acks = self._acks, []
            claims = self._pop(tags)
        self._write_outcome(claims, "ack")

    def release(self, tags: Sequence[str]) -> None:
        """Put these held jobs back to ``queued`` now (they were never delivered)."""
        with self._lock:
            claims = self._pop(tags)
        self._requeue(claims)

    def release_all(self) -> None:
        """Write the held acks, then put every other held job back to ``queued``."""
        self.flush_acks()
        with self._lock:
            claims = list(self._claims.values())
            self._claims.clear()
        self._requeue(claims)

    def holds_claims(self) -> bool:
        """Whether any claimed job is held (delivered or prefetched, not yet settled)."""
        return bool(self._claims)

    def forget_all(self) -> None:
        """Drop every claim without writing anything, as a dead owner would (for tests)."""
        with self._lock:
            self._claims.clear()

    def _pop(self, tags: Sequence[str]) -> list[Claim]:
        return [c for t in tags if (c := self._claims.pop(t, None)) is not None]

    def _write_outcome(self, claims: list[Claim], action: Action, error: str | None = None) -> None:
        if not claims:
            return
        if action == "ack":
            stmt = self.q.complete if self.options.on_ack == "complete" else self.q.delete_claimed
            params = [self._params(c) for c in claims]
        elif action == "supersede":
            stmt, params = self.q.delete_claimed, [self._params(c) for c in claims]
        elif action == "cancel":
            stmt, params = self.q.cancel_claimed, [self._params(c) for c in claims]
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
        self.on_free()

    def _requeue(self, claims: list[Claim]) -> None:
        if not claims:
            return
        try:
            self._write(self.q.requeue, [self._params(c) for c in claims])
        except SQLAlchemyError:
            logger.warning(
                "could not requeue %d job(s) now; their leases will expire", len(claims), exc_info=True
            )

    # -- keeping leases ------------------------------------------------------------------

    def heartbeat(self) -> int:
        """Renew the leases of every held job, fail rows claimed ``max_attempts`` times whose
        lease expired, and requeue the other expired ones; returns how many were requeued."""
        with self._lock:
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
            requeued = int(conn.execute(self.q.reap, {"now": now}).rowcount)
        if requeued:
            logger.warning("%d job(s) requeued after their lease expired", requeued)
        return requeued
