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
    Delete,
    Select,
    TextClause,
    Update,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.sql.dml import Insert

from unified_jobs.adapters.sql.schema import COMPLETED, FAILED, PROCESSING, QUEUED, Tables

__all__ = ["Queries", "queries_for"]


@dataclass(frozen=True)
class Queries:
    """Prepared statements; parameter names are given in each field's comment."""

    # queue, task_name, task_id, payload, priority, run_at, now
    enqueue: Insert
    # queues (list), limit, now, owner, lease_until -> rows (id, queue, payload, attempts, priority, run_at)
    claim: Update
    # queues (list) -> earliest run_at of a queued job, or NULL
    next_due: Select[Any]
    # executemany of {job_id, claim_attempts, owner, now}
    complete: Update
    # executemany of {job_id, claim_attempts, owner}
    delete_claimed: Delete
    # executemany of {job_id, claim_attempts, owner, now, error}
    fail: Update
    # executemany of {job_id, claim_attempts, owner, now}
    requeue: Update
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
    expired = (c.status == PROCESSING) & (c.lease_expires_at < now)

    return Queries(
        enqueue=insert(j).values(
            queue=bindparam("queue"),
            task_name=bindparam("task_name"),
            task_id=bindparam("task_id"),
            payload=bindparam("payload"),
            status=QUEUED,
            priority=bindparam("priority"),
            run_at=bindparam("run_at"),
            attempts=0,
            created_at=now,
            updated_at=now,
        ),
        claim=claim,
        next_due=select(func.min(c.run_at)).where(queued_in),
        complete=update(j).where(mine).values(status=COMPLETED, updated_at=now, **cleared),
        delete_claimed=delete(j).where(mine),
        fail=update(j)
        .where(mine)
        .values(status=FAILED, updated_at=now, last_error=bindparam("error"), **cleared),
        requeue=update(j).where(mine).values(status=QUEUED, updated_at=now, **cleared),
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
            **cleared,
        ),
        reap=update(j)
        .where(expired)
        .values(
            status=QUEUED,
            updated_at=now,
            last_error=literal("lease expired (worker died or stalled); owner was ")
            + func.coalesce(c.lease_owner, ""),
            **cleared,
        ),
        purge=delete(j).where(c.queue == bindparam("queue"), c.status == QUEUED),
        size=select(func.count()).select_from(j).where(c.queue == bindparam("queue"), c.status == QUEUED),
        counts=select(c.queue, c.status, func.count())
        .group_by(c.queue, c.status)
        .order_by(c.queue, c.status),
        async_commit=text("SET LOCAL synchronous_commit = off") if dialect == "postgresql" else None,
    )
