"""How long a publish tries: Celery's publish retry policy, and no retry after a timeout.

``PUBLISH_RETRY_POLICY`` (the app's ``task_publish_retry_policy``) retries a publish that failed
on its connection 3 times, 0, 0.2 and 0.4 s apart, on a new connection each time: right for
a refused or reset connection (a broker restarting), which fails at once. A broker that
accepted the connection and does not answer fails a try only after the queue's
``read_timeout`` (or ``connect_timeout``), and kombu's reconnecting loop nests inside its retry
loop, so the tries would add up to many timeouts. So a publish made in ``bounded()`` (every
``send_task`` of a ``Jobs`` app in BackgroundQueue mode: ``perform_later``, an adopted task's
``delay()``, a retry's republish) ends at its first timeout: ``EnqueueError`` after one
timeout, plus the quick retries of connections refused before it (0.6 s of pauses at most).

A silently dropped idle connection, which would also time out, is what TCP keepalives are
for (the Redis transport's ``socket_keepalive``, py-amqp's defaults, libpq's).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from unified_jobs._faults import fault_of, library_of, links

__all__ = ["PUBLISH_RETRY_POLICY", "bounded", "give_up_on_timeout", "timed_out", "timeout_in"]

#: Whether the publish running in this context gives up at its first timeout.
_bounded: ContextVar[bool] = ContextVar("unified_jobs_bounded_publish", default=False)


def timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` says the server did not answer in time (a socket or driver timeout; a
    SQLite database locked past its busy timeout)."""
    return timeout_in(exc) is not None


def timeout_in(exc: BaseException) -> BaseException | None:
    """The timeout ``exc`` is or wraps (kombu's ``OperationalError`` around py-amqp's
    ``socket.timeout``, SQLAlchemy's around psycopg's ``ConnectionTimeout``), or None."""
    for link in links(exc):
        if fault_of(link) == "timeout":
            return link
        if library_of(link) == "sqlite3" and "database is locked" in str(link):
            return link
    return None


def give_up_on_timeout(exc: BaseException, interval: float = 0) -> None:
    """kombu's ``errback`` of a publish's retries (called after each failed try, before the
    next): raises ``exc`` when a publish in ``bounded()`` timed out. Elsewhere (kombu keeps
    the policy's keys in the connection's transport options, where other reconnections
    find them) it does nothing."""
    if _bounded.get() and timed_out(exc):
        raise exc


@contextmanager
def bounded() -> Iterator[None]:
    """The publishes in this block end at their first timeout."""
    token = _bounded.set(True)
    try:
        yield
    finally:
        _bounded.reset(token)


#: The app's ``task_publish_retry_policy`` (see the module docstring).
PUBLISH_RETRY_POLICY: dict[str, Any] = {
    "max_retries": 3,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
    "errback": give_up_on_timeout,
}
