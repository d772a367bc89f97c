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

A held job's result (``note_result``) is written by the UPDATE that completes its row; a job
run in another process (a prefork pool's child) has it written there (``keep_result``), and
``note_result_here`` tells which case it is.

A database outage runs nothing twice (docs/explanation/guarantees.md says the bound):

- an outcome that cannot be written (the database is down) stays *unsettled*: its lease is
  still renewed by every heartbeat, and the write is tried again by each ``flush_acks`` and
  ``heartbeat`` until it lands (``retry_unsettled``);
- reaping (requeueing the expired leases of other owners) waits one ``lease_sec`` after this
  owner was made, and one ``lease_sec`` after the database answers again following a failed
  write: every live owner, which renews every ``lease_sec / 3``, has renewed its leases by then,
  however long the outage was, and only a dead owner's leases are still expired.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from time import monotonic
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from sqlalchemy import Engine
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from unified_jobs.adapters.sql.prepared import PreparedInsert
from unified_jobs.adapters.sql.schema import QUEUED

if TYPE_CHECKING:
    from unified_jobs.adapters.sql.options import SqlOptions
    from unified_jobs.adapters.sql.queries import Queries

__all__ = ["Action", "Claim", "Leases", "Outcome", "claim_of", "note_result_here", "utcnow"]

logger = logging.getLogger(__name__)

_UTC = timezone.utc

#: What became of a claimed job.
Action = Literal["ack", "reject", "requeue", "supersede", "cancel"]


#: The columns ``_copy`` writes, in its rows' order.
_COPY_COLUMNS = (
    "queue",
    "task_name",
    "task_id",
    "payload",
    "status",
    "priority",
    "run_at",
    "attempts",
    "created_at",
    "updated_at",
)


def utcnow() -> datetime:
    return datetime.now(_UTC)


def aware(value: datetime) -> datetime:
    # SQLite hands datetimes back naive; we only ever store UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=_UTC)


class Claim(NamedTuple):
    id: int
    attempts: int


class Outcome(NamedTuple):
    """An outcome not written yet (the database did not answer): retried until it lands."""

    claims: list[Claim]
    action: Action
    error: str | None
    error_class: str | None
    results: list[str | None] | None


def claim_of(tag: object) -> Claim | None:
    """The claim a delivery tag (``"<row id>.<attempts>"``) names, or None if it names none."""
    row, sep, attempts = str(tag).partition(".")
    try:
        return Claim(int(row), int(attempts)) if sep else None
    except ValueError:
        return None


#: The errors of a database that does not answer (down, restarting, SQLite's lock held): an
#: outcome that meets one is kept and written later. Any other error is not going to pass.
_UNAVAILABLE = (OperationalError, InterfaceError)

#: sqlite3's result codes of a lock another connection holds (``SQLITE_BUSY``, ``SQLITE_LOCKED``).
_SQLITE_BUSY_CODES = (5, 6)


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's lock held past the busy timeout: the database answers, it is
    only busy. Such an error is not an outage: other owners go on renewing their leases, so it
    does not hold reaping back (else steady contention would postpone reaping for good)."""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return (int(code) & 0xFF) in _SQLITE_BUSY_CODES  # the primary code of an extended one
    return isinstance(exc, OperationalError) and "database is locked" in str(orig)


#: The ``Leases`` made in this process (a forked child starts without its parent's).
_here: weakref.WeakSet[Leases] = weakref.WeakSet()


def note_result_here(engine: Engine, queries: Queries, tag: str, result: str) -> bool:
    """Note ``result`` for the job held under ``tag`` by a ``Leases`` of this process on that
    table (the worker's pool runs jobs in threads, or in its main thread), so that its ack
    writes it; False if none here holds it (a prefork pool's child: ``keep_result`` then)."""
    for leases in list(_here):
        if leases.q is queries and leases.engine.url == engine.url and leases.note_result(tag, result):
            return True
    return False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_here.clear)


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
        #: Why a held job failed, and the error's class path (noted just before the consumer
        #: acks or rejects it).
        self._failure_notes: dict[str, tuple[str, str | None]] = {}
        #: What held jobs returned, as JSON text (written by their ack).
        self._results: dict[str, str] = {}
        #: Held jobs republished for a retry (their ack deletes the old row).
        self._superseded: set[str] = set()
        #: Held jobs that stopped on a cancel request (their ack writes them cancelled).
        self._cancelled: set[str] = set()
        self._acks: list[str] = []
        #: Outcomes whose write failed, oldest first; their leases are still renewed.
        self._unsettled: list[Outcome] = []
        #: Reaping waits until then (monotonic): one lease after this owner was made, and one
        #: lease after the database answers again following a failure (``_note_failure``).
        self._reap_after = monotonic() + options.lease_sec
        #: When a write failed and the database has not answered since (monotonic), or None.
        self._failing_since: float | None = None
        #: After an empty claim: when the earliest queued job of those queues is due (or None).
        self.next_due: datetime | None = None
        self._prepared_enqueue: PreparedInsert | None = None
        _here.add(self)

    # -- outages -------------------------------------------------------------------------

    def _note_failure(self, exc: BaseException) -> None:
        """A write or read failed with ``exc``: an outage starts, unless the database only was
        busy (``is_busy``)."""
        if self._failing_since is None and not is_busy(exc):
            self._failing_since = monotonic()

    def _note_success(self) -> None:
        """The database answered. After an outage, other owners have not renewed their leases
        for as long as it lasted: hold reaping back one lease from now, so they can."""
        if self._failing_since is not None:
            lasted = monotonic() - self._failing_since
            self._failing_since = None
            self._reap_after = max(self._reap_after, monotonic() + self.options.lease_sec)
            logger.warning(
                "the jobs database answers again after %.1f s; expired leases are requeued from "
                "%g s on, once live workers have renewed theirs",
                lasted,
                self.options.lease_sec,
            )

    @property
    def failing(self) -> bool:
        """Whether the last write failed and none succeeded since (an outage, as seen here)."""
        return self._failing_since is not None

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

    def enqueue_one(self, row: dict[str, Any]) -> None:
        """``enqueue_many`` of one row, as one statement in autocommit on a connection of the
        engine's pool (``PreparedInsert``): atomic on its own, and committed on return."""
        prepared = self._prepared_enqueue
        if prepared is None:
            prepared = self._prepared_enqueue = PreparedInsert(self.engine, self.q.enqueue)
        prepared(row)

    def enqueue_many(self, rows: list[dict[str, Any]], connection: Connection) -> None:
        """Insert ``queued`` rows without unique keys (``enqueue``'s parameters each) in one
        statement, in ``connection``'s transaction: COPY on Postgres (psycopg 3), about four
        times the rows a second of an INSERT's executemany."""
        dialect = connection.dialect
        if len(rows) > 1 and dialect.name == "postgresql" and dialect.driver == "psycopg":
            self._copy(rows, connection)
            return
        connection.execute(self.q.enqueue, rows)

    def _copy(self, rows: list[dict[str, Any]], connection: Connection) -> None:
        """``enqueue_many`` with Postgres's ``COPY ... FROM STDIN``, through the psycopg
        connection under ``connection`` (so in its transaction). The rows' triggers fire as for
        an INSERT (the NOTIFY that wakes the workers). A database error comes out as
        SQLAlchemy's, as an ``execute``'s does, the connection invalidated if it is lost."""
        import psycopg
        from sqlalchemy.exc import DBAPIError

        table = connection.dialect.identifier_preparer.format_table(self.q.enqueue.table)
        sql = f"COPY {table} ({', '.join(_COPY_COLUMNS)}) FROM STDIN"
        raw: Any = connection.connection.driver_connection
        try:
            with raw.cursor() as cursor, cursor.copy(sql) as copy:
                for r in rows:
                    now = r["now"]
                    values = (r["queue"], r["task_name"], r["task_id"], r["payload"], QUEUED)
                    copy.write_row((*values, r["priority"], r["run_at"], 0, now, now))
        except psycopg.Error as exc:
            lost = connection.dialect.is_disconnect(exc, raw, None)  # type: ignore[arg-type]
            if lost:
                connection.invalidate(exc)
            raise DBAPIError.instance(
                sql, None, exc, psycopg.Error, connection_invalidated=lost, dialect=connection.dialect
            ) from exc

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
        try:
            claim = self.q.claim
            transaction: AbstractContextManager[Connection]
            if self.engine.dialect.name == "postgresql":
                # One statement, atomic by itself: in autocommit (no BEGIN, no COMMIT), and
                # committing asynchronously by its own set_config where async_commit is on.
                if self.options.async_commit and self.q.claim_async is not None:
                    claim = self.q.claim_async
                transaction = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            else:
                transaction = self.engine.begin()
            with transaction as conn:
                rows = list(conn.execute(claim, params).all())
                if not rows:
                    due = conn.execute(self.q.next_due, {"queues": list(queues)}).scalar()
                    self.next_due = aware(due) if isinstance(due, datetime) else None
        except SQLAlchemyError as exc:
            self._note_failure(exc)
            raise
        self._note_success()
        if not rows:
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
        params = self._params(Claim(row.id, row.attempts), error=reason, error_class=None)
        self._write(self.q.fail, [params])

    # -- settling ------------------------------------------------------------------------

    def note_failure(self, tag: str, error: str, error_class: str | None = None) -> None:
        """Record why a held job failed; its coming ack or reject writes the row failed, with
        this as its ``last_error`` (and ``error_class``, the exception's dotted class path)."""
        with self._lock:
            if tag in self._claims:
                self._failure_notes[tag] = (error[:16000], error_class)

    def note_result(self, tag: str, result: str) -> bool:
        """Record what a held job returned (JSON text); its coming ack writes it with the row's
        completion (``on_ack: complete``). False if the tag is not held."""
        with self._lock:
            if tag not in self._claims:
                return False
            if self.options.on_ack == "complete":  # else the ack deletes the row
                self._results[tag] = result
        return True

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
            note = self._failure_notes.pop(tag, None)
            claims, results = self._take([tag])
        error, error_class = note if note is not None else (None, None)
        self._write_outcome(claims, action, error=error, error_class=error_class, results=results)

    def flush_acks(self) -> None:
        """Write the unsettled outcomes, then the held acks, in one transaction each."""
        if self._unsettled and not self.retry_unsettled():
            return  # still down: the acks wait too, held (and renewed) as they are
        with self._lock:
            tags, self._acks = self._acks, []
            claims, results = self._take(tags)
        self._write_outcome(claims, "ack", results=results)

    def retry_unsettled(self) -> bool:
        """Write the outcomes whose write failed, oldest first; whether none is left."""
        while True:
            with self._lock:
                if not self._unsettled:
                    return True
                outcome = self._unsettled[0]
            try:
                changed = self._write(*self._statement(outcome))
            except _UNAVAILABLE as exc:
                self._note_failure(exc)
                return False
            except SQLAlchemyError:
                logger.exception(
                    "could not record the %s of job(s) %s; they will be redelivered",
                    outcome.action,
                    [c.id for c in outcome.claims],
                )
                with self._lock:
                    self._unsettled.remove(outcome)
                continue
            self._note_success()
            with self._lock:
                self._unsettled.remove(outcome)
            logger.info(
                "wrote the %s of job(s) %s after the database came back%s",
                outcome.action,
                [c.id for c in outcome.claims],
                "" if changed == len(outcome.claims) else " (some had been written before it went away)",
            )

    def release(self, tags: Sequence[str]) -> None:
        """Put these held jobs back to ``queued`` now (they were never delivered)."""
        with self._lock:
            claims = self._pop(tags)
        self._requeue(claims)

    def release_all(self) -> None:
        """Write the held acks, then put every other held job back to ``queued``."""
        self.flush_acks()
        if self._unsettled:
            logger.error(
                "closing with the outcomes of job(s) %s unwritten (the database does not answer): "
                "their leases will expire and they will run again",
                [c.id for o in self._unsettled for c in o.claims],
            )
        with self._lock:
            acked = set(self._acks)  # their ack could not be written: not queued again
            claims = [c for tag, c in self._claims.items() if tag not in acked]
            self._claims.clear()
            self._results.clear()
        self._requeue(claims)

    def holds_claims(self) -> bool:
        """Whether any claimed job is held (delivered or prefetched, not yet settled, or
        settled and its outcome not written yet)."""
        return bool(self._claims) or bool(self._unsettled)

    def forget_all(self) -> None:
        """Drop every claim without writing anything, as a dead owner would (for tests)."""
        with self._lock:
            self._claims.clear()
            self._results.clear()

    def _pop(self, tags: Sequence[str]) -> list[Claim]:
        # Under self._lock. The claims' results go with them.
        return self._take(tags)[0]

    def _take(self, tags: Sequence[str]) -> tuple[list[Claim], list[str | None] | None]:
        """Under self._lock: the held claims of ``tags``, no longer held, and their results in
        the same order (None when no result is noted at all)."""
        claims = [c for t in tags if (c := self._claims.pop(t, None)) is not None]
        if not self._results:
            return claims, None
        results = {t: self._results.pop(t, None) for t in tags}
        return claims, [results.get(f"{c.id}.{c.attempts}") for c in claims]

    def _write_outcome(
        self,
        claims: list[Claim],
        action: Action,
        error: str | None = None,
        error_class: str | None = None,
        results: list[str | None] | None = None,
    ) -> None:
        """``results``: each claim's result (JSON text or None), in order, for an ack. An
        outcome that cannot be written now is kept, its leases renewed, and written later."""
        if not claims:
            return
        outcome = Outcome(claims, action, error, error_class, results)
        if self._unsettled:  # an older one is still unwritten: outcomes land in their order
            with self._lock:
                self._unsettled.append(outcome)
            self.on_free()
            return
        try:
            changed = self._write(*self._statement(outcome))
        except _UNAVAILABLE as exc:
            self._note_failure(exc)
            logger.warning(
                "could not record the %s of job(s) %s now (%s); it is tried again until the "
                "database answers, and their leases are renewed meanwhile",
                action,
                [c.id for c in claims],
                type(exc).__name__,
            )
            with self._lock:
                self._unsettled.append(outcome)
        except SQLAlchemyError:
            # Not an outage: trying again would not help. The leases will expire and the jobs
            # run again: at least once, never lost.
            ids = [c.id for c in claims]
            logger.exception("could not record the %s of job(s) %s; they run again", action, ids)
        else:
            self._note_success()
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

    def _statement(self, outcome: Outcome) -> tuple[Any, list[dict[str, Any]]]:
        """The statement that writes ``outcome``, and its params (one dict per claim)."""
        claims, action, error, error_class, _ = outcome
        if action == "ack" and self.options.on_ack == "complete":
            found = outcome.results if outcome.results is not None else [None] * len(claims)
            return self.q.complete, [self._params(c, result=r) for c, r in zip(claims, found, strict=True)]
        if action in ("ack", "supersede"):  # on_ack: delete, or republished for a retry
            return self.q.delete_claimed, [self._params(c) for c in claims]
        if action == "cancel":
            return self.q.cancel_claimed, [self._params(c) for c in claims]
        if action == "reject":
            if error is None:
                error, error_class = "rejected by the consumer (requeue=False)", None
            return self.q.fail, [self._params(c, error=error, error_class=error_class) for c in claims]
        return self.q.requeue, [self._params(c) for c in claims]

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
        """Renew the leases of every held job (unsettled ones included), write the unsettled
        outcomes, and, unless reaping is held back (see the module docstring), fail rows
        claimed ``max_attempts`` times whose lease expired and requeue the other expired ones;
        returns how many were requeued."""
        with self._lock:
            ids = [c.id for c in self._claims.values()]
            ids += [c.id for o in self._unsettled for c in o.claims]
        now = utcnow()
        # Not the first write after an outage (which starts the hold-back), nor within one.
        reap = not self.failing and monotonic() >= self._reap_after
        failed = requeued = 0
        try:
            with self.engine.begin() as conn:
                self._begin_fast(conn)
                if ids:
                    until = now + timedelta(seconds=self.options.lease_sec)
                    conn.execute(self.q.heartbeat, {"ids": ids, "owner": self.owner, "lease_until": until})
                if reap and self.options.max_attempts:
                    limit = {"now": now, "max_attempts": self.options.max_attempts}
                    failed = int(conn.execute(self.q.reap_exhausted, limit).rowcount)
                if reap:
                    requeued = int(conn.execute(self.q.reap, {"now": now}).rowcount)
        except SQLAlchemyError as exc:
            self._note_failure(exc)
            raise
        self._note_success()
        self.retry_unsettled()
        if failed:
            logger.error("%d job(s) failed: lease expired after max_attempts claims", failed)
        if requeued:
            logger.warning("%d job(s) requeued after their lease expired", requeued)
        return requeued
