"""What a publish through the SQL transport does beyond inserting its row, set by the code that
publishes (``CeleryQueueAdapter``) for the calls it makes in this thread: write the row in the
caller's own transaction (``perform_later(transaction=...)``), and report the jobs that were not
inserted because a waiting or running job holds their unique key.

The transport's ``_put`` runs in the publishing thread, under Celery's ``send_task``, so a
context variable carries both there and back without touching Celery's call chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

__all__ = ["UNIQUE_HEADER", "UNIQUE_UNTIL_HEADER", "Publishing", "current", "publishing"]

#: The message headers that carry a unique job's key and when it expires (ISO 8601, UTC).
UNIQUE_HEADER = "unified_jobs_unique"
UNIQUE_UNTIL_HEADER = "unified_jobs_unique_until"


@dataclass
class Publishing:
    #: A SQLAlchemy ``Connection`` in the caller's transaction to insert the rows with (else
    #: each row is inserted and committed on its own).
    connection: Any = None
    #: ``{task id: the task id of the job holding its unique key}`` for the rows not inserted.
    refused: dict[str, str] = field(default_factory=dict)


_current: ContextVar[Publishing | None] = ContextVar("unified_jobs_sql_publishing", default=None)


def current() -> Publishing | None:
    return _current.get()


@contextmanager
def publishing(connection: Any = None) -> Iterator[Publishing]:
    """Publishes in this block insert through ``connection`` (if given) and report refusals,
    to the enclosing block's too (a batch's transaction inside ``enqueue_unique``)."""
    outer = _current.get()
    state = Publishing(connection, outer.refused if outer is not None else {})
    token = _current.set(state)
    try:
        yield state
    finally:
        _current.reset(token)
