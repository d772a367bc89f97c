"""``perform_later(transaction=...)``: SQLAlchemy connections and sessions as transactions jobs
are enqueued with.

Where the queue is the same database (the Postgres and SQLite kinds), the job's row is written
through the caller's connection, in its transaction (``connection_of``). Everywhere else the
jobs wait in memory beside the transaction and are enqueued right after it commits, or dropped
when it rolls back (``after_commit``), as Django's ``transaction.on_commit`` does.

A ``Session`` uses its own ``after_commit`` / ``after_rollback`` events. A Core ``Connection``
has no "after commit" event, only ``commit``, which runs just before the database commits; there
the handler commits the database transaction itself first (SQLAlchemy's own commit that follows
then has nothing left to do), so the jobs are enqueued only once the data is committed, and a
commit that fails enqueues nothing.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from unified_jobs.errors import EnqueueError, InvalidOptionError

__all__ = ["after_commit", "connection_of"]

logger = logging.getLogger(__name__)

_ASYNC_HINT = (
    "call it from sync code inside the async one, e.g. "
    "await session.run_sync(lambda s: MyWorker.perform_later(args, transaction=s))"
)


def _check(transaction: Any) -> Session | Connection:
    """``transaction`` as a sync Session or Connection in a transaction, or a clear error."""
    kind = type(transaction).__name__
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


def connection_of(transaction: Any) -> Connection:
    """The Connection whose transaction ``transaction`` is (a Session's, for its default bind)."""
    checked = _check(transaction)
    return checked.connection() if isinstance(checked, Session) else checked


# What waits for a commit: per Session or Connection, its callbacks in order. Weak keys: an
# object that is garbage-collected took its uncommitted transaction (and the jobs) with it.
_pending: weakref.WeakKeyDictionary[Any, list[tuple[Callable[[], None], str]]] = weakref.WeakKeyDictionary()
_listened: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()


def after_commit(transaction: Any, callback: Callable[[], None], *, what: str) -> None:
    """Run ``callback`` (which enqueues ``what``) once ``transaction`` commits; never if it
    rolls back. A callback that fails raises ``EnqueueError`` from the commit (the data is
    committed by then; the message says so)."""
    target = _check(transaction)
    with _lock:
        if target not in _listened:
            _listen(target)
            _listened.add(target)
        _pending.setdefault(target, []).append((callback, what))


def _listen(target: Session | Connection) -> None:
    if isinstance(target, Session):
        event.listen(target, "after_commit", _session_committed)
        event.listen(target, "after_rollback", _dropped)
    else:
        event.listen(target, "commit", _connection_committing)
        event.listen(target, "rollback", _dropped)


def _take(target: Any) -> list[tuple[Callable[[], None], str]]:
    with _lock:
        return _pending.pop(target, None) or []


def _session_committed(session: Session) -> None:
    _run(_take(session))


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


def _dropped(target: Any) -> None:
    for _callback, what in _take(target):
        logger.info("the transaction rolled back: %s not enqueued", what)


def _run(waiting: list[tuple[Callable[[], None], str]]) -> None:
    failures: list[str] = []
    first: BaseException | None = None
    for callback, what in waiting:
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
