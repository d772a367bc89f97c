"""The statements of the dashboard's reads of a SQL queue's jobs table (``SqlJobStore.jobs``,
``status_counts``, ``queue_stats``, ``throughput``); the rest of the queue's SQL is in
``queries.py``.

A job's status is read from its row as ``get()`` reads it: a ``queued`` row is ``retrying``
when its message carries the failed attempt's error header (``retry_mark``: a LIKE pattern for
it, from the caller), else ``scheduled`` while its run_at is ahead of ``now``. Every row of
the jobs table is a queue's message (remote control's messages have a table of their own,
``broadcast.py``), so none is left out by its task name.

Each read is shaped for the index of schema step 6, ``(status, updated_at, id)``: a page of
one status walks it newest change first and stops at the page; a page of every status is the
newest rows of each status, merged (one ORDER BY over the whole table would sort all of it);
counts and the throughput read the index only. A text search decodes the message body of the
newest ``n`` candidates only (``SEARCH_LIMIT``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    Subquery,
    bindparam,
    case,
    exists,
    func,
    select,
    union_all,
)

from unified_jobs.adapters.sql.schema import COMPLETED, FAILED, PROCESSING, QUEUED, STATUSES, Tables

__all__ = [
    "BODY_FUNCTION",
    "candidates_count",
    "counts_by_status",
    "page",
    "queued_split",
    "queues",
    "throughput",
]

#: The SQLite function, registered on the store's read connections (``store.read_engine``),
#: that gives a payload's message body as text; Postgres does it in SQL.
BODY_FUNCTION = "unified_jobs_body"


def body_text(dialect: str, payload: Any) -> ColumnElement[Any]:
    """The Celery message body (args, kwargs, Celery's options) of a payload, as JSON text.

    On Postgres with string functions, not a JSON parse (a sixth of the cost): the transport
    writes the payload with ``json.dumps``, body first; a base64 body holds no quote, and the
    exact ``"body": "`` cannot occur inside a JSON string."""
    if dialect == "postgresql":
        encoded = func.split_part(func.split_part(payload, '"body": "', 2), '"', 1)
        return case(
            (
                payload.like('%"body_encoding": "base64"%'),
                func.convert_from(func.decode(encoded, "base64"), "UTF8"),
            ),
            else_=payload,
        )
    return getattr(func, BODY_FUNCTION)(payload)  # type: ignore[no-any-return]


def _retrying(t: Tables) -> ColumnElement[bool]:
    return t.jobs.c.payload.like(bindparam("retry_mark"), escape="\\")


def _in_status(t: Tables, status: str) -> list[ColumnElement[bool]]:
    """Rows in ``status``, a job status as ``get()`` reports it."""
    c = t.jobs.c
    if status == "queued":
        return [c.status == QUEUED, c.run_at <= bindparam("now"), ~_retrying(t)]
    if status == "scheduled":
        return [c.status == QUEUED, c.run_at > bindparam("now"), ~_retrying(t)]
    if status == "retrying":
        return [c.status == QUEUED, _retrying(t)]
    if status == PROCESSING:
        # A retried job's old row stays processing until its worker's ack (held for the next
        # batch) supersedes it; by then the newest row of its task id, the one ``get()`` reads,
        # already says retrying: list the job under that status only.
        newer = t.jobs.alias("newer")
        superseded = exists().where(newer.c.task_id == c.task_id, newer.c.id > c.id)
        return [c.status == PROCESSING, ~superseded]
    return [c.status == status]


def _newest(t: Tables, status: str | None, worker: bool, queue: bool) -> Subquery:
    """The newest ``n`` rows in ``status`` (``None``: any) of ``worker``/``queue`` if given,
    newest change first."""
    j = t.jobs
    c = j.c
    n: BindParameter[int] = bindparam("n")
    filters: list[ColumnElement[bool]] = []
    if worker:
        filters.append(c.task_name == bindparam("worker"))
    if queue:
        filters.append(c.queue == bindparam("queue"))

    def newest(where: list[ColumnElement[bool]]) -> Select[Any]:
        return select(j).where(*where, *filters).order_by(c.updated_at.desc(), c.id.desc()).limit(n)

    if status is not None:
        return newest(_in_status(t, status)).subquery("newest")
    # Each status' newest n ids from the index, the newest n of those, then their rows (a
    # LIMIT keeps a text filter from being applied to the whole table before the join).
    parts = [
        select(c.id, c.updated_at)
        .where(c.status == s, *filters)
        .order_by(c.updated_at.desc(), c.id.desc())
        .limit(n)
        .subquery(f"newest_{s}")
        for s in STATUSES
    ]
    merged = union_all(*(select(part) for part in parts)).subquery("newest_of_each")
    top = (
        select(merged.c.id).order_by(merged.c.updated_at.desc(), merged.c.id.desc()).limit(n).subquery("top")
    )
    return select(j).join(top, c.id == top.c.id).limit(n).subquery("newest")


@lru_cache(maxsize=256)
def page(t: Tables, dialect: str, status: str | None, worker: bool, queue: bool, search: bool) -> Select[Any]:
    """now, retry_mark, n, limit, offset[, worker][, queue][, pattern] -> the page's rows (the
    jobs table's columns), newest change first, among the newest ``n`` candidates (``n``: at
    least offset + limit; for a search, the rows it looks at). ``pattern``: a LIKE pattern
    (escape ``\\``) of the message body, case-insensitive."""
    rows = _newest(t, status, worker, queue)
    stmt = select(rows)
    if search:
        body = body_text(dialect, rows.c.payload)
        pattern: BindParameter[str] = bindparam("pattern")
        stmt = stmt.where(
            body.ilike(pattern, escape="\\") if dialect == "postgresql" else body.like(pattern, escape="\\")
        )
    return (
        stmt.order_by(rows.c.updated_at.desc(), rows.c.id.desc())
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )


@lru_cache(maxsize=256)
def candidates_count(t: Tables, status: str | None, worker: bool, queue: bool) -> Select[Any]:
    """now, retry_mark, n[, worker][, queue] -> how many rows (up to ``n``) match the filters
    other than the text: more than a search's window says it stopped short of some."""
    return select(func.count()).select_from(_newest(t, status, worker, queue))


@lru_cache(maxsize=64)
def counts_by_status(t: Tables) -> Select[Any]:
    """-> rows (the row's status, count), from the index alone."""
    c = t.jobs.c
    return select(c.status, func.count()).group_by(c.status)


@lru_cache(maxsize=64)
def queued_split(t: Tables) -> Select[Any]:
    """now, retry_mark -> one row (retrying, scheduled) among the queued rows; the others are
    queued."""
    c = t.jobs.c
    retrying = _retrying(t)
    return select(
        func.coalesce(func.sum(case((retrying, 1), else_=0)), 0),
        func.coalesce(func.sum(case((~retrying & (c.run_at > bindparam("now")), 1), else_=0)), 0),
    ).where(c.status == QUEUED)


@lru_cache(maxsize=64)
def queues(t: Tables) -> Select[Any]:
    """now, retry_mark -> rows (queue, queued, scheduled, processing, failed, oldest queued
    created_at) of the queues with a job waiting, running or failed, in one pass: a queued row
    due and not a retry is queued, the others (delayed, retries) scheduled."""
    c = t.jobs.c
    # In this order, so that only the queued rows due now have their payload read.
    due = case(
        (c.status != QUEUED, False), (c.run_at > bindparam("now"), False), (_retrying(t), False), else_=True
    )
    return (
        select(
            c.queue,
            func.sum(case((due, 1), else_=0)),
            func.sum(case((c.status == QUEUED, 1), else_=0)) - func.sum(case((due, 1), else_=0)),
            func.sum(case((c.status == PROCESSING, 1), else_=0)),
            func.sum(case((c.status == FAILED, 1), else_=0)),
            func.min(case((due, c.created_at), else_=None)),
        )
        .where(c.status.in_([QUEUED, PROCESSING, FAILED]))
        .group_by(c.queue)
    )


@lru_cache(maxsize=64)
def throughput(t: Tables, dialect: str) -> Select[Any]:
    """since -> rows (minute, status, count) of the completed and failed rows last changed
    since then; the minute is a datetime on Postgres, ``'YYYY-MM-DD HH:MM'`` (UTC) on SQLite,
    read from the index alone (SQLite keeps datetimes as such text)."""
    c = t.jobs.c
    if dialect == "postgresql":
        minute: ColumnElement[Any] = func.date_trunc("minute", c.updated_at)
    else:
        minute = func.substr(c.updated_at, 1, 16)
    ended = (
        select(minute.label("minute"), c.status)
        .where(c.status.in_([COMPLETED, FAILED]), c.updated_at >= bindparam("since"))
        .subquery("ended")
    )
    return select(ended.c.minute, ended.c.status, func.count()).group_by(ended.c.minute, ended.c.status)
