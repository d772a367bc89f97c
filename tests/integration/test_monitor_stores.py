"""The dashboard's reads of the Redis and Postgres job stores where workers cannot show them:
an index that its records no longer agree with, expiry, the search limit, ``run_now``'s move
of a delayed message, and the SQL's decoding of message bodies. (The reads through real
workers on every backend: tests/contract/test_monitor.py.)"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import insert

from tests.conftest import (
    PG_HOST,
    PG_PORT,
    PG_URL,
    REDIS_HOST,
    REDIS_PORT,
    clear_sql_jobs,
    flush_redis_db,
    redis_url,
    require_service,
    sql_prefix,
)
from unified_jobs.adapters.celery.kinds.redis import INDEX, RedisJobStore
from unified_jobs.adapters.celery.kinds.redis_transport import DELAYED_PREFIX, SEP, dumps
from unified_jobs.adapters.celery.kinds.sql import SqlJobStore
from unified_jobs.core.job import Job, new_job_id, utcnow
from unified_jobs.core.monitor import SEARCH_LIMIT, JobQuery
from unified_jobs.core.outcome import Outcome
from unified_jobs.core.store import StartCheck


def job(queue: str = "default", kwargs: str = '{"n":1}', wait: float | None = None) -> Job:
    run_at = utcnow() + timedelta(seconds=wait) if wait is not None else None
    return Job(id=new_job_id(), name="w.Echo", queue=queue, kwargs_json=kwargs, run_at=run_at)


@pytest.fixture
def store() -> Iterator[RedisJobStore]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    flush_redis_db("monitor")
    store = RedisJobStore(redis_url("monitor"), keep_completed=1, shares_broker=True)
    yield store
    store.close()
    flush_redis_db("monitor")


@pytest.mark.redis
def test_redis_index_entries_whose_record_is_gone_or_moved_on_are_dropped(store: RedisJobStore) -> None:
    kept, expired, changed = job(), job(), job()
    store.record_enqueued([kept, expired, changed])
    store.client.delete(store.key(expired.id))  # as if it had expired
    store.client.hset(store.key(changed.id), "status", "processing")  # written, index not moved
    assert [i.id for i in store.jobs(JobQuery(status="queued")).jobs] == [kept.id]
    assert store.client.zrange(f"{INDEX}queued:default", 0, -1) == [kept.id]
    assert store.status_counts() == {"queued": 1}


@pytest.mark.redis
def test_redis_completed_entries_leave_the_index_with_their_records(store: RedisJobStore) -> None:
    done = job()
    store.record_enqueued([done])
    store.record_started(done)
    store.record_outcome(done, Outcome("succeeded", 1))
    assert store.status_counts() == {"completed": 1}
    assert sum(b.completed for b in store.throughput(2)) == 1
    time.sleep(1.1)  # keep_completed is 1 s
    assert store.status_counts() == {}
    assert store.jobs(JobQuery(status="completed")).jobs == []
    assert sum(b.completed for b in store.throughput(2)) == 1, "the count outlives the record"


def _status(store: RedisJobStore, job_id: str) -> str:
    info = store.get(job_id)
    assert info is not None, f"no record of {job_id}"
    return info.status


@pytest.mark.redis
@pytest.mark.parametrize("ended", ["succeeded", "failed", "retry"])
def test_redis_a_repeated_delivery_of_an_attempt_that_ended_is_settled(
    store: RedisJobStore, ended: str
) -> None:
    """A message whose ack was lost (the broker restarted after the job ran) comes again: the
    store says that attempt ended, so the worker does not run it twice, and the record keeps
    its status. The next attempt of a retried job still runs. (Through real workers and a
    RabbitMQ restart: tests/faults/test_rabbitmq_restart.py.)"""
    first = job()
    store.record_enqueued([first])
    assert store.record_started(first) == StartCheck(deliveries=1)
    if ended == "succeeded":
        outcome = Outcome("succeeded", 1)
    else:
        extra = {"retry_at": utcnow() + timedelta(seconds=30)} if ended == "retry" else {}
        outcome = Outcome.from_error(ended, ValueError("no"), 1, **extra)  # type: ignore[arg-type]
    store.record_outcome(first, outcome)
    status = _status(store, first.id)
    assert status in ("completed", "failed", "retrying")
    assert store.record_started(first) == StartCheck(settled=True)
    assert _status(store, first.id) == status, "the repeated delivery changed the record"
    if ended == "retry":
        assert store.record_started(replace(first, attempt=2)) == StartCheck(deliveries=1)
        assert _status(store, first.id) == "processing"


@pytest.mark.redis
def test_redis_search_stops_at_search_limit_and_says_so(store: RedisJobStore) -> None:
    oldest = job(queue="mail", kwargs='{"who":"Oldest"}')
    store.record_enqueued([oldest])
    for _ in range(6):  # 12,000 newer jobs: more than SEARCH_LIMIT
        store.record_enqueued([job(queue=q) for q in ("default", "mail") for _ in range(1000)])
    beyond = store.jobs(JobQuery(text="OLDEST"))
    assert beyond.jobs == [] and beyond.searched == SEARCH_LIMIT
    assert store.jobs(JobQuery(worker="w.Nobody")).searched == SEARCH_LIMIT
    whole = store.jobs(JobQuery(status="queued", queue="mail", limit=10))
    assert len(whole.jobs) == 10 and whole.more and whole.searched is None
    last = store.jobs(JobQuery(queue="mail", offset=6000, limit=10))  # no filter: the walk goes on
    assert [i.id for i in last.jobs] == [oldest.id] and not last.more
    assert {(q.name, q.queued) for q in store.queue_stats()} == {("default", 6000), ("mail", 6001)}


@pytest.mark.redis
def test_redis_run_now_moves_the_delayed_message_to_its_list_due_now(store: RedisJobStore) -> None:
    later = job(wait=3600)
    store.record_enqueued([later])
    assert later.run_at is not None
    message = {"body": "e30=", "headers": {"id": later.id, "task": "w.Echo", "eta": later.run_at.isoformat()}}
    member = f"default{SEP}{dumps(message)}"
    store.client.zadd(DELAYED_PREFIX + "default", {member: later.run_at.timestamp()})
    assert store.run_now(later.id) is True
    assert store.client.zcard(DELAYED_PREFIX + "default") == 0
    pushed = json.loads(store.client.lindex("default", 0))
    assert pushed["headers"] == {**message["headers"], "eta": None}  # type: ignore[dict-item]
    info = store.get(later.id)
    assert (
        info is not None and info.status == "queued" and info.run_at is not None and info.run_at <= utcnow()
    )
    assert [i.id for i in store.jobs(JobQuery(status="queued")).jobs] == [later.id]
    assert store.jobs(JobQuery(status="scheduled")).jobs == []
    assert store.run_now(later.id) is False, "due already"
    gone = job(wait=3600)  # a mover took its message first (it fell due): nothing to move
    store.record_enqueued([gone])
    assert store.run_now(gone.id) is False
    assert store.get(gone.id).status == "scheduled"  # type: ignore[union-attr]


@pytest.mark.redis
def test_the_rabbitmq_kinds_store_cannot_run_a_delayed_job_now(store: RedisJobStore) -> None:
    beside = RedisJobStore(redis_url("monitor"), shares_broker=False)  # queue.store_uri's store
    later = job(wait=3600)
    beside.record_enqueued([later])
    assert beside.can_run_now is False
    assert beside.run_now(later.id) is False
    assert beside.get(later.id).status == "scheduled"  # type: ignore[union-attr]
    beside.close()


@pytest.mark.postgres
def test_postgres_decodes_message_bodies_for_a_text_search() -> None:
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    prefix = sql_prefix("monitor")
    clear_sql_jobs(PG_URL, prefix)
    sql = SqlJobStore(PG_URL, prefix)
    now = utcnow()

    def payload(task_id: str, kwargs: dict[str, object], encoding: str | None = "base64") -> str:
        body = json.dumps([[], kwargs, {}])
        properties = {"body_encoding": encoding} if encoding else {}
        encoded = base64.b64encode(body.encode()).decode() if encoding else body
        headers = {"task": "w.Echo", "id": task_id, "eta": None, "retries": 0}
        return json.dumps({"body": encoded, "headers": headers, "properties": properties})

    def row(task_id: str, kwargs: dict[str, object], encoding: str | None) -> dict[str, object]:
        common = {
            "queue": "default",
            "task_name": "w.Echo",
            "status": "completed",
            "priority": 0,
            "attempts": 1,
        }
        times = {"run_at": now, "created_at": now, "updated_at": now}
        return {**common, **times, "task_id": task_id, "payload": payload(task_id, kwargs, encoding)}

    rows = [
        row("zoe", {"who": "Zoë"}, "base64"),
        row("plain", {"who": "Plain Body"}, None),
        row("x", {"who": "x"}, "base64"),
    ]
    with sql.table._ready().begin() as conn:
        conn.execute(insert(sql.table.tables.jobs), rows)
    try:
        assert [i.id for i in sql.jobs(JobQuery(text="zoë")).jobs] == ["zoe"]
        assert [i.id for i in sql.jobs(JobQuery(text="plain body")).jobs] == ["plain"]
        assert [i.id for i in sql.jobs(JobQuery(text="%")).jobs] == [], "a LIKE wildcard is a character"
        assert sql.status_counts() == {"completed": 3}
        assert sum(b.completed for b in sql.throughput(2)) == 3
    finally:
        clear_sql_jobs(PG_URL, prefix)
