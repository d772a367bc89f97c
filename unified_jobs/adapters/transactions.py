"""``perform_later(transaction=...)``: SQLAlchemy connections and sessions as transactions jobs
are enqueued with.

Where the queue is the same database (the Postgres and SQLite kinds), the job's row is written
through the caller's connection, in its transaction (``connection_of``). Everywhere else the
jobs wait in memory beside the transaction and are enqueued right after it commits, or dropped
when it rolls back (``after_commit``), as Django's ``transaction.on_commit`` does.

A ``Session`` uses its own events (``after_commit``; ``after_soft_rollback``, which also tells
of a rolled-back savepoint; ``after_transaction_end``, for a session closed without a commit). A
Core ``Connection`` has no "after commit" event, only ``commit``, which runs just before the
database commits; there the handler commits the database transaction itself first
(SQLAlchemy's own commit that follows then has nothing left to do), so the jobs are enqueued
only once the data is committed, and a commit that fails enqueues nothing. Jobs enqueued in a
savepoint (``begin_nested()``) that is rolled back are dropped with it, on both.

A ``ForeignTransaction`` is a transaction another library runs (Django's ``atomic()`` blocks,
``unified_jobs.django``): it says whether one is open, runs a callback after its commit (never
after a rollback), and may lend a SQLAlchemy Connection inside it, which the SQL kinds write
through when it reaches the queue's database.
"""

from __future__ import annotations

import logging
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from unified_jobs.errors import EnqueueError, InvalidOptionError

__all__ = ["ForeignTransaction", "after_commit", "borrowed_connection", "connection_of"]

logger = logging.getLogger(__name__)

_ASYNC_HINT = (
    "call it from sync code inside the async one, e.g. "
    "await session.run_sync(lambda s: MyWorker.perform_later(args, transaction=s))"
)


class ForeignTransaction(ABC):
    """A transaction that another library manages (Django's ``transaction.atomic()``), given as
    ``perform_later(transaction=...)``."""

    @abstractmethod
    def in_transaction(self) -> bool:
        """Whether a transaction is open now."""

    @abstractmethod
    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the transaction commits; never if it (or the savepoint open
        now) rolls back."""

    def connection(self) -> Connection | None:
        """A SQLAlchemy Connection whose statements run in this very transaction (its URL names
        the database), or None. It must never commit or roll back by itself."""
        return None

    def describe(self) -> str:
        return type(self).__name__


def borrowed_connection(dbapi_connection: Any, url: str, holder: Any) -> Connection:
    """A SQLAlchemy Connection over ``dbapi_connection``, a DB-API connection that another
    library owns and runs a transaction on (``url`` names its database, for the same-database
    check): statements run in that transaction, and SQLAlchemy's commits and rollbacks (closing
    the Connection rolls back) never reach it. Close the Connection when done. The engine is
    kept on ``holder`` (an object that lives as long as the connection; a new one is made when
    ``holder`` has another connection since)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    held = getattr(holder, _BORROWED, None)
    if held is None or held[0] is not dbapi_connection:
        engine = create_engine(
            url, creator=lambda: dbapi_connection, poolclass=StaticPool, pool_reset_on_return=None
        )
        dialect: Any = engine.dialect
        dialect.do_commit = dialect.do_rollback = lambda dbapi_connection: None
        held = (dbapi_connection, engine)
        setattr(holder, _BORROWED, held)
    conn = held[1].connect()
    conn.begin()  # SQLAlchemy's bookkeeping only: nothing reaches the database
    return conn


_BORROWED = "_unified_jobs_borrowed_engine"


def _check(transaction: Any) -> Session | Connection | ForeignTransaction:
    """``transaction`` as a sync Session or Connection in a transaction, or a clear error."""
    kind = type(transaction).__name__
    if isinstance(transaction, ForeignTransaction):
        if not transaction.in_transaction():
            raise InvalidOptionError(
                f"transaction= got {transaction.describe()}, which is not in a transaction, so there is "
                "no commit to wait for; enqueue inside the transaction or without transaction="
            )
        return transaction
    if kind in ("AsyncSession", "AsyncConnection"):
        raise InvalidOptionError(
            f"transaction= takes a sync SQLAlchemy Session or Connection, not an {kind}; " + _ASYNC_HINT
        )
    if not isinstance(transaction, (Session, Connection)):
        raise InvalidOptionError(
            "transaction= takes a SQLAlchemy Connection or Session in a transaction (e.g. from "
            f"`with engine.begin() as conn:` or `with Session(engine) as s, s.begin():`), got {transaction!r}"
        )
    if not transaction.in_transaction():
        raise InvalidOptionError(
            f"transaction= got a {kind} that is not in a transaction, so there is no commit to wait "
            "for; begin one first (engine.begin(), session.begin()) or enqueue without transaction="
        )
    return transaction


def connection_of(transaction: Any) -> Connection | None:
    """The Connection whose transaction ``transaction`` is (a Session's, for its default bind;
    a ``ForeignTransaction``'s, if it lends one)."""
    checked = _check(transaction)
    if isinstance(checked, ForeignTransaction):
        return checked.connection()
    return checked.connection() if isinstance(checked, Session) else checked


# What waits for a commit: per Session or Connection, its jobs in order, each with the
# (sub)transaction it was enqueued in. Weak keys: an object that is garbage-collected took its
# uncommitted transaction (and the jobs) with it.
_Entry = tuple[Callable[[], None], str, Any]
_pending: weakref.WeakKeyDictionary[Any, list[_Entry]] = weakref.WeakKeyDictionary()
_listened: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()


def after_commit(transaction: Any, callback: Callable[[], None], *, what: str) -> None:
    """Run ``callback`` (which enqueues ``what``) once ``transaction`` commits; never if it
    rolls back, or if the savepoint it was enqueued in is rolled back. A callback that fails
    raises ``EnqueueError`` from the commit (the data is committed by then; the message says
    so)."""
    target = _check(transaction)
    if isinstance(target, ForeignTransaction):
        # The other library keeps the callbacks with their (sub)transaction, and drops them on
        # a rollback; a failing one raises from its commit, as here.
        target.on_commit(lambda: _run([(callback, what, None)]))
        return
    scope = _scope(target)
    with _lock:
        if target not in _listened:
            _listen(target)
            _listened.add(target)
        _pending.setdefault(target, []).append((callback, what, scope))


def _scope(target: Session | Connection) -> Any:
    """Where a job is enqueued: a Session's innermost SessionTransaction; a Connection's open
    savepoint names, innermost first (empty outside any savepoint)."""
    if isinstance(target, Session):
        return target.get_nested_transaction() or target.get_transaction()
    names = []
    nested = target.get_nested_transaction()
    while nested is not None:
        names.append(getattr(nested, "_savepoint", None))
        nested = getattr(nested, "_previous_nested", None)
    return tuple(names)


def _listen(target: Session | Connection) -> None:
    if isinstance(target, Session):
        event.listen(target, "after_commit", _session_committed)
        event.listen(target, "after_soft_rollback", _session_rolled_back)
        event.listen(target, "after_transaction_end", _session_ended)
    else:
        event.listen(target, "commit", _connection_committing)
        event.listen(target, "rollback", _connection_rolled_back)
        event.listen(target, "rollback_savepoint", _savepoint_rolled_back)


def _take(target: Any, ended: Callable[[Any], bool] = lambda scope: True) -> list[_Entry]:
    """Remove and return the entries of ``target`` whose scope ``ended``."""
    with _lock:
        entries = _pending.get(target)
        if not entries:
            return []
        taken = [e for e in entries if ended(e[2])]
        kept = [e for e in entries if not ended(e[2])]
        if kept:
            _pending[target] = kept
        else:
            del _pending[target]
        return taken


def _session_committed(session: Session) -> None:
    _run(_take(session))


def _session_rolled_back(session: Session, previous: Any) -> None:
    def inside(scope: Any) -> bool:  # the rolled-back transaction, or one nested in it
        while scope is not None:
            if scope is previous:
                return True
            scope = scope.parent
        return False

    _dropped(_take(session, inside))


def _session_ended(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # the session's transaction ended without a commit (close())
        _dropped(_take(session))


def _connection_committing(conn: Connection) -> None:
    waiting = _take(conn)
    if not waiting:
        return
    # Commit now, so that the jobs are enqueued after the data is in; SQLAlchemy's commit,
    # which called this, then commits an empty transaction.
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    dbapi.commit()
    _run(waiting)


def _connection_rolled_back(conn: Connection) -> None:
    _dropped(_take(conn))


def _savepoint_rolled_back(conn: Connection, name: str, context: Any = None) -> None:
    _dropped(_take(conn, lambda scope: name in scope))


def _dropped(entries: list[_Entry]) -> None:
    for _callback, what, _scope in entries:
        logger.info("the transaction rolled back: %s not enqueued", what)


def _run(waiting: list[_Entry]) -> None:
    failures: list[str] = []
    first: BaseException | None = None
    for callback, what, _scope in waiting:
        try:
            callback()
        except Exception as exc:
            failures.append(f"{what}: {exc}")
            first = first or exc
    if failures:
        raise EnqueueError(
            "the transaction committed, but enqueueing after the commit failed, so these jobs do not "
            "exist: " + "; ".join(failures)
        ) from first
