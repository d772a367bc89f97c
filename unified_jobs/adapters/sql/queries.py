"""Every statement the SQL queue runs on its jobs table (the DDL is in ``schema.py``).

Statements are built once per table set and dialect, with bound parameters, so SQLAlchemy's
compiled cache serves every call. All times are passed in (UTC, from the caller's clock).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Delete,
    Select,
    String,
    Text,
    TextClause,
    Update,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.dml import Insert

from unified_jobs.adapters.sql.schema import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PROCESSING,
    QUEUED,
    UNIQUE_HOLDERS,
    Tables,
)

__all__ = [
    "AdminQueries",
    "Queries",
    "admin_queries_for",
    "count_filtered",
    "count_jobs",
    "delete_jobs",
    "job_page",
    "queries_for",
    "recent_jobs",
    "retry_failed",
]


@dataclass(frozen=True)
class Queries:
    """Prepared statements; parameter names are given in each field's comment."""

    # queue, task_name, task_id, payload, priority, run_at, now
    enqueue: Insert
    # the same, plus unique_key, unique_until: inserts nothing while a queued or processing
    # row holds the key -> the new row's id, or no row
    enqueue_unique: Insert
    # unique_key -> the row holding it (id, task_id, unique_until), if any
    unique_holder: Select[Any]
    # holder_id -> rowcount: the row gives its key up (expired, or superseded by its own retry)
    unique_free: Update
    # queues (list), limit, now, owner, lease_until -> rows (id, queue, payload, attempts, priority, run_at)
    claim: Update
    # queues (list) -> earliest run_at of a queued job, or NULL
    next_due: Select[Any]
    # executemany of {job_id, claim_attempts, owner, now, result}: result (JSON text, or NULL
    # to keep the row's, which a worker's pool process may have written: ``keep_result``)
    complete: Update
    # job_id, claim_attempts, result -> rowcount: a claimed row's result, written by the pool
    # process that ran the job (its ack is written by the main process, which never sees it)
    keep_result: Update
    # executemany of {job_id, claim_attempts, owner}
    delete_claimed: Delete
    # executemany of {job_id, claim_attempts, owner, now, error, error_class}
    fail: Update
    # job_id, claim_attempts, now, error, error_class -> rowcount: the claim failed, whoever
    # holds it (a ``--pool processes`` supervisor, for a process it killed)
    fail_claim: Update
    # job_id, claim_attempts, now -> rowcount: the claim queued again, whoever holds it
    requeue_claim: Update
    # executemany of {job_id, claim_attempts, owner, now}
    requeue: Update
    # executemany of {job_id, claim_attempts, owner, now}: the job stopped on a cancel request
    cancel_claimed: Update
    # ids (list), owner, lease_until
    heartbeat: Update
    # now, max_attempts: expired leases of jobs claimed max_attempts times or more -> failed
    reap_exhausted: Update
    # now: expired leases -> queued again
    reap: Update
    # queue -> rowcount
    purge: Delete
    # queue -> int
    size: Select[Any]
    # -> rows (queue, status, count)
    counts: Select[Any]
    # Postgres only: a cheaper commit for claims, acks and heartbeats
    async_commit: TextClause | None
    # Postgres only: ``claim`` committing asynchronously by itself (``set_config`` of
    # synchronous_commit for its own transaction), run in autocommit: one round trip where
    # BEGIN, SET LOCAL, the UPDATE and COMMIT were four
    claim_async: Update | None


@lru_cache(maxsize=64)
def queries_for(t: Tables, dialect: str) -> Queries:
    """The statements for table set ``t`` on ``dialect`` ("postgresql" or "sqlite")."""
    j = t.jobs
    c = j.c
    now: BindParameter[Any] = bindparam("now")
    owner: BindParameter[Any] = bindparam("owner")
    queues: BindParameter[Any] = bindparam("queues", expanding=True)
    queued_in = (c.status == QUEUED) & c.queue.in_(queues)

    pick = (
        select(c.id)
        .where(queued_in, c.run_at <= now)
        .order_by(c.priority.desc(), c.run_at, c.id)
        .limit(bindparam("limit"))
    )
    if dialect == "postgresql":
        # Claimers skip each other's rows instead of queueing on their locks.
        pick = pick.with_for_update(skip_locked=True)
    claim = (
        update(j)
        .where(c.id.in_(pick.scalar_subquery()))
        .values(
            status=PROCESSING,
            lease_owner=owner,
            lease_expires_at=bindparam("lease_until"),
            attempts=c.attempts + 1,
            updated_at=now,
        )
        .returning(c.id, c.queue, c.payload, c.attempts, c.priority, c.run_at)
    )

    # A settle only touches the claim it was handed: same row, same attempt, same owner,
    # still processing. After a lost lease it changes nothing, and the caller is told.
    mine = (
        (c.id == bindparam("job_id"))
        & (c.attempts == bindparam("claim_attempts"))
        & (c.lease_owner == owner)
        & (c.status == PROCESSING)
    )
    cleared = {"lease_owner": None, "lease_expires_at": None}
    # One claim of a row, whoever holds it (a claim's attempts count is its own).
    this_claim = (
        c.id == bindparam("job_id"),
        c.attempts == bindparam("claim_attempts"),
        c.status == PROCESSING,
    )
    failed = {
        "status": FAILED,
        "updated_at": now,
        "last_error": bindparam("error"),
        "error_class": bindparam("error_class", type_=Text()),
        **cleared,
    }
    expired = (c.status == PROCESSING) & (c.lease_expires_at < now)

    holds_key = text(UNIQUE_HOLDERS)  # the partial index's own predicate, word for word
    dialect_insert = pg_insert if dialect == "postgresql" else sqlite_insert
    enqueue_unique = (
        dialect_insert(j)
        .values(
            **_queued_values(now), unique_key=bindparam("unique_key"), unique_until=bindparam("unique_until")
        )
        .on_conflict_do_nothing(index_elements=[c.unique_key], index_where=holds_key)
        .returning(c.id)  # rowcount does not say whether a row was inserted on every driver
    )
    return Queries(
        enqueue=_insert_queued(t, created_at=now),
        enqueue_unique=enqueue_unique,
        unique_holder=select(c.id, c.task_id, c.unique_until).where(
            c.unique_key == bindparam("unique_key"), c.status.in_([QUEUED, PROCESSING])
        ),
        unique_free=update(j)
        .where(c.id == bindparam("holder_id"))
        .values(unique_key=None, unique_until=None),
        claim=claim,
        next_due=select(func.min(c.run_at)).where(queued_in),
        complete=update(j)
        .where(mine)
        .values(
            status=COMPLETED,
            updated_at=now,
            result_json=func.coalesce(bindparam("result", type_=Text()), c.result_json),
            **cleared,
        ),
        keep_result=update(j).where(*this_claim).values(result_json=bindparam("result")),
        delete_claimed=delete(j).where(mine),
        fail=update(j).where(mine).values(**failed),
        fail_claim=update(j).where(*this_claim).values(**failed),
        requeue_claim=update(j).where(*this_claim).values(status=QUEUED, updated_at=now, **cleared),
        requeue=update(j).where(mine).values(status=QUEUED, updated_at=now, **cleared),
        cancel_claimed=update(j).where(mine).values(status=CANCELLED, updated_at=now, **cleared),
        heartbeat=update(j)
        .where(c.id.in_(bindparam("ids", expanding=True)), c.lease_owner == owner, c.status == PROCESSING)
        .values(lease_expires_at=bindparam("lease_until")),
        reap_exhausted=update(j)
        .where(expired, c.attempts >= bindparam("max_attempts"))
        .values(
            status=FAILED,
            updated_at=now,
            last_error=literal("lease expired after the last allowed attempt; owner was ")
            + func.coalesce(c.lease_owner, ""),
            error_class=None,
            **cleared,
        ),
        reap=update(j)
        .where(expired)
        .values(
            status=QUEUED,
            updated_at=now,
            last_error=literal("lease expired (worker died or stalled); owner was ")
            + func.coalesce(c.lease_owner, ""),
            error_class=None,
            **cleared,
        ),
        purge=delete(j).where(c.queue == bindparam("queue"), c.status == QUEUED),
        size=select(func.count()).select_from(j).where(c.queue == bindparam("queue"), c.status == QUEUED),
        counts=select(c.queue, c.status, func.count())
        .group_by(c.queue, c.status)
        .order_by(c.queue, c.status),
        async_commit=text("SET LOCAL synchronous_commit = off") if dialect == "postgresql" else None,
        claim_async=(
            claim.where(func.set_config("synchronous_commit", "off", True).is_not(None))
            if dialect == "postgresql"
            else None
        ),
    )


# --- the ``jobs`` command line (store.py) ----------------------------------------------------
#
# Filters are bound parameters: ``statuses`` (an expanding list) always; ``worker`` (the task
# name) and ``cutoff`` (rows last updated at or before it) when the statement is built with
# them. Each shape is built once and cached.


@dataclass(frozen=True)
class AdminQueries:
    """Statements of the ``jobs`` commands; parameter names are given in each field's comment."""

    # now, worker -> rowcount: queued jobs of a worker become cancelled
    cancel: Update
    # now, cutoff, error -> rowcount: processing since cutoff or before, lease expired or absent
    requeue_stuck: Update
    # statuses (list) -> rowcount: delete every job with one of these statuses
    delete_statuses: Delete
    # queue, task_name, task_id, payload, priority, run_at, created_at, now (executemany)
    insert_imported: Insert
    # task_id -> the status of the newest row of that Celery task id
    status_of: Select[Any]


#: The columns ``jobs list --jobs`` shows (and ``jobs dump`` writes, with the payload).
_LISTED = (
    "id",
    "queue",
    "task_name",
    "task_id",
    "status",
    "priority",
    "run_at",
    "attempts",
    "last_error",
    "created_at",
    "updated_at",
)


@lru_cache(maxsize=64)
def admin_queries_for(t: Tables) -> AdminQueries:
    """The fixed-shape statements of the ``jobs`` commands for table set ``t``."""
    j = t.jobs
    c = j.c
    now: BindParameter[Any] = bindparam("now")
    return AdminQueries(
        status_of=select(c.status).where(c.task_id == bindparam("task_id")).order_by(c.id.desc()).limit(1),
        cancel=update(j)
        .where(c.status == QUEUED, c.task_name == bindparam("worker"))
        .values(status=CANCELLED, updated_at=now),
        requeue_stuck=update(j)
        .where(
            c.status == PROCESSING,
            c.updated_at <= bindparam("cutoff"),
            # A lease still being renewed means a live worker is running the job: not stuck.
            (c.lease_expires_at.is_(None)) | (c.lease_expires_at < now),
        )
        .values(
            status=QUEUED,
            updated_at=now,
            lease_owner=None,
            lease_expires_at=None,
            last_error=bindparam("error") + func.coalesce(c.lease_owner, "nobody"),
            error_class=None,
        ),
        delete_statuses=delete(j).where(c.status.in_(bindparam("statuses", expanding=True))),
        insert_imported=_insert_queued(t, created_at=bindparam("created_at")),
    )


def _insert_queued(t: Tables, created_at: Any) -> Insert:
    """A new queued row: queue, task_name, task_id, payload, priority, run_at, now (+ created_at)."""
    return insert(t.jobs).values(**_queued_values(created_at))


def _queued_values(created_at: Any) -> dict[str, Any]:
    return dict(
        queue=bindparam("queue"),
        task_name=bindparam("task_name"),
        task_id=bindparam("task_id"),
        payload=bindparam("payload"),
        status=QUEUED,
        priority=bindparam("priority"),
        run_at=bindparam("run_at"),
        attempts=0,
        created_at=created_at,
        updated_at=bindparam("now"),
    )


def _filtered(t: Tables, worker: bool, older: bool) -> list[ColumnElement[bool]]:
    c = t.jobs.c
    where: list[ColumnElement[bool]] = [c.status.in_(bindparam("statuses", expanding=True))]
    if worker:
        where.append(c.task_name == bindparam("worker"))
    if older:
        where.append(c.updated_at <= bindparam("cutoff"))
    return where


@lru_cache(maxsize=64)
def count_jobs(t: Tables, worker: bool) -> Select[Any]:
    """statuses, now[, worker] -> rows (queue, status, count, delayed): delayed are the queued
    jobs whose run_at is after now."""
    c = t.jobs.c
    delayed = func.sum(case(((c.status == QUEUED) & (c.run_at > bindparam("now")), 1), else_=0))
    return (
        select(c.queue, c.status, func.count(), delayed)
        .where(*_filtered(t, worker, older=False))
        .group_by(c.queue, c.status)
        .order_by(c.queue, c.status)
    )


@lru_cache(maxsize=64)
def count_filtered(t: Tables, worker: bool, older: bool) -> Select[Any]:
    """statuses[, worker][, cutoff] -> the number of matching jobs."""
    return select(func.count()).select_from(t.jobs).where(*_filtered(t, worker, older))


@lru_cache(maxsize=64)
def recent_jobs(t: Tables, worker: bool) -> Select[Any]:
    """statuses, limit[, worker] -> the newest matching jobs (``_LISTED`` columns), newest first."""
    c = t.jobs.c
    columns = [c[name] for name in _LISTED]
    return (
        select(*columns)
        .where(*_filtered(t, worker, older=False))
        .order_by(c.id.desc())
        .limit(bindparam("limit"))
    )


@lru_cache(maxsize=64)
def job_page(t: Tables, worker: bool, older: bool, payload: bool) -> Select[Any]:
    """statuses, after_id, limit[, worker][, cutoff] -> the next page of matching jobs by id.

    Keyset pages keep every transaction short (on SQLite each one holds the write lock).
    With ``payload`` the rows have every column a dump needs; without, only ``id``.
    """
    c = t.jobs.c
    columns = [c[name] for name in (*_LISTED, "payload")] if payload else [c.id]
    return (
        select(*columns)
        .where(*_filtered(t, worker, older), c.id > bindparam("after_id"))
        .order_by(c.id)
        .limit(bindparam("limit"))
    )


@lru_cache(maxsize=64)
def delete_jobs(t: Tables, older: bool) -> Delete:
    """ids (list), statuses[, cutoff] -> rowcount; the filters are checked again at delete time."""
    c = t.jobs.c
    return delete(t.jobs).where(c.id.in_(bindparam("ids", expanding=True)), *_filtered(t, False, older))


@lru_cache(maxsize=64)
def retry_failed(t: Tables, worker: bool) -> Update:
    """now[, worker] -> rowcount: failed jobs back to queued, with a fresh attempts count."""
    c = t.jobs.c
    where: list[ColumnElement[bool]] = [c.status == FAILED]
    if worker:
        where.append(c.task_name == bindparam("worker"))
    # A failed job retried is no longer unique: another job may hold its key by now.
    return (
        update(t.jobs)
        .where(*where)
        .values(status=QUEUED, attempts=0, updated_at=bindparam("now"), unique_key=None, unique_until=None)
    )


# --- one job, by its Celery task id (the job store behind ``jobs.job()`` and friends) --------


@dataclass(frozen=True)
class OneJobQueries:
    """Statements on the newest row of one task id; every one takes ``job_task_id``."""

    # -> the newest row of the task id (all columns)
    get: Select[Any]
    # worker (optional: NULL for all), limit -> failed rows, newest first
    failed: Select[Any]
    # now -> rowcount: a queued row of the task id becomes cancelled
    cancel: Update
    # -> rowcount: the newest row, if failed or cancelled, is deleted
    discard: Delete
    # now -> the task id if a cancel request was made (the newest row is processing)
    request_cancel: Insert
    # -> rowcount: the task id's cancel request is deleted
    clear_request: Delete
    # older -> rowcount: cancel requests made before ``older`` are deleted
    clear_old_requests: Delete
    # ids (list) -> task ids asked to stop while their newest row was processing (this claim)
    cancel_requested: Select[Any]
    # row_id, payload, now -> rowcount: a queued row due later is due now (``run_now``); the
    # status is set (to what it is) so that the Postgres trigger wakes the workers
    run_now: Update


@lru_cache(maxsize=64)
def one_job_queries_for(t: Tables) -> OneJobQueries:
    j = t.jobs
    r = t.cancels
    c = j.c
    now: BindParameter[Any] = bindparam("now")
    task_id = c.task_id == bindparam("job_task_id")
    newest = select(func.max(c.id)).where(task_id).scalar_subquery()
    worker = bindparam("worker", type_=String())
    return OneJobQueries(
        get=select(j).where(c.id == newest),
        failed=select(j)
        .where(c.status == FAILED, (worker.is_(None)) | (c.task_name == worker))
        .order_by(c.updated_at.desc(), c.id.desc())
        .limit(bindparam("limit")),
        cancel=update(j).where(c.id == newest, c.status == QUEUED).values(status=CANCELLED, updated_at=now),
        discard=delete(j).where(c.id == newest, c.status.in_([FAILED, CANCELLED])),
        request_cancel=insert(r)
        .from_select(
            ["task_id", "requested_at"],
            select(
                bindparam("job_task_id", type_=String()), bindparam("now", type_=r.c.requested_at.type)
            ).where(select(c.id).where(c.id == newest, c.status == PROCESSING).exists()),
        )
        .returning(r.c.task_id),  # psycopg reports no rowcount for INSERT ... SELECT
        clear_request=delete(r).where(r.c.task_id == bindparam("job_task_id")),
        clear_old_requests=delete(r).where(r.c.requested_at < bindparam("older")),
        # A request made before the newest row's claim (updated_at) was for an earlier run.
        cancel_requested=select(r.c.task_id)
        .join(j, j.c.task_id == r.c.task_id)
        .where(
            r.c.task_id.in_(bindparam("ids", expanding=True)),
            c.status == PROCESSING,
            r.c.requested_at >= c.updated_at,
        )
        .distinct(),
        run_now=update(j)
        .where(c.id == bindparam("row_id"), c.status == QUEUED, c.run_at > now)
        .values(run_at=now, payload=bindparam("payload"), status=QUEUED),
    )
