"""Benchmark: the dashboard's reads of the job stores with 100,000 jobs in them.

Run:  .venv/bin/python bench/bench_monitor.py [--jobs 100000] [--runs 15] [--only redis,postgres,sqlite]

Each store is filled directly, in bulk (no worker runs a job): jobs in mixed states (about
60% completed, 12% failed, 5% cancelled, 10% queued, 5% scheduled, 3% retrying, 5% processing)
over 4 queues and 10 workers, their arguments naming a user (``user<i>@example.com``) and a
note (``"vip"`` for 1% of them), ended over the last 90 minutes. Then each read is timed,
median of ``--runs`` runs after one warm-up: the first page (50) of each status and of all, a
page filtered by worker, by queue, by text (one matching 1% of the jobs, one matching none:
the search then stops at ``SEARCH_LIMIT``), a page at offset 1000, ``status_counts``,
``queue_stats`` and ``throughput(60)``. Then the dashboard's pages, each a GET through its ASGI
app (Starlette's test client: routing, the store's reads, rendering; no network), median of
``--runs``: its budget is 200 ms a page.

Redis: database 5 of redis://127.0.0.1:6379 (``--redis-url``; it must be empty or hold only this
benchmark's keys; it is flushed). Postgres: UJ_BENCH_PG_URI or
postgresql://postgres@127.0.0.1:5432/test, fresh ``ujbmon_<tag>_`` tables, dropped after.
SQLite: a fresh file in a temporary folder. The Redis writes are the store's own (its pipeline
for enqueues, its scripts for starts and outcomes, pipelined); the SQL rows are written as the
SQL transport writes them (the kombu message as JSON, its body base64).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unified_jobs.core.job import Job, new_job_id  # noqa: E402
from unified_jobs.core.monitor import SEARCH_LIMIT, JobQuery  # noqa: E402
from unified_jobs.core.outcome import Outcome  # noqa: E402
from unified_jobs.core.store import JobStore  # noqa: E402

PG = os.environ.get("UJ_BENCH_PG_URI", "postgresql://postgres@127.0.0.1:5432/test")
QUEUES = ("default", "mail", "reports", "payments")
WORKERS = tuple(f"bench.Worker{i}" for i in range(10))
#: status -> share of the jobs
MIX = {
    "completed": 0.60,
    "failed": 0.12,
    "cancelled": 0.05,
    "queued": 0.10,
    "scheduled": 0.05,
    "retrying": 0.03,
    "processing": 0.05,
}
SPAN = timedelta(minutes=90)


def plan(n: int, seed: int = 7) -> list[tuple[str, Job, datetime]]:
    """(status, job, when it entered the status) for n jobs, oldest first."""
    rng = random.Random(seed)
    statuses = rng.choices(list(MIX), weights=list(MIX.values()), k=n)
    now = datetime.now(timezone.utc)
    out = []
    for i, status in enumerate(statuses):
        when = now - SPAN + SPAN * (i / n)
        run_at = now + timedelta(hours=2) if status in ("scheduled", "retrying") else None
        note = "vip" if rng.random() < 0.01 else rng.choice(("gift", "rush", "plain"))
        kwargs = {"user": f"user{i}@example.com", "order": i, "note": note}
        job = Job(
            id=new_job_id(),
            name=rng.choice(WORKERS),
            queue=rng.choice(QUEUES),
            kwargs_json=json.dumps(kwargs, separators=(",", ":")),
            run_at=run_at,
            enqueued_at=when - timedelta(seconds=1),
        )
        out.append((status, job, when))
    return out


# -- filling -------------------------------------------------------------------------------------


def fill_redis(store: Any, jobs: list[tuple[str, Job, datetime]]) -> None:
    """The store's own writes, batched: record_enqueued per 1000 jobs, then its start and
    outcome scripts as EVALSHAs in pipelines."""
    from unified_jobs.adapters.celery.kinds.redis import RedisJobStore

    assert isinstance(store, RedisJobStore)
    client = store.client
    start_sha = client.script_load(store._start.script)
    outcome_sha = client.script_load(store._outcome.script)
    for i in range(0, len(jobs), 1000):
        store.record_enqueued([job for _, job, _ in jobs[i : i + 1000]])
    pipe = client.pipeline(transaction=False)
    for n, (status, job, when) in enumerate(jobs):
        if status in ("queued", "scheduled"):
            continue
        if status == "cancelled":
            # a waiting job cancelled: the store's cancel (one call each; 5% of the jobs)
            pipe.execute()
            store.cancel(job.id)
            continue
        started = when - timedelta(seconds=0.5)
        pipe.evalsha(start_sha, 1, store.key(job.id), *store.started_args(job, started))
        outcome = {
            "completed": Outcome("succeeded", 1),
            "failed": Outcome("failed", 1, error_text="RuntimeError: boom", traceback="Traceback ..."),
            "retrying": Outcome(
                "retry", 1, error_text="ConnectionError: later", traceback="...", retry_at=job.run_at
            ),
        }.get(status)
        if outcome is not None:
            pipe.evalsha(outcome_sha, 1, store.key(job.id), *store.outcome_args(job, outcome, when))
        if n % 1000 == 999:
            pipe.execute()
    pipe.execute()


def _payload(job: Job, status: str) -> str:
    """The kombu message as the SQL transport stores it (``json.dumps`` of it, body base64)."""
    body = json.dumps([[], json.loads(job.kwargs_json), {"callbacks": None, "errbacks": None, "chain": None}])
    headers: dict[str, Any] = {
        "lang": "py",
        "task": job.name,
        "id": job.id,
        "eta": job.run_at.isoformat() if job.run_at else None,
        "retries": 1 if status == "retrying" else 0,
        "argsrepr": "()",
        "kwargsrepr": repr(json.loads(job.kwargs_json)),
        "origin": "bench@host",
    }
    if status == "retrying":
        headers["unified_jobs_error"] = "ConnectionError: later"
    message = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": job.id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": job.queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message)


def fill_sql(store: Any, jobs: list[tuple[str, Job, datetime]]) -> None:
    """Rows as the SQL transport leaves them in each state, inserted 1000 a statement."""
    from sqlalchemy import insert

    table = store.table
    rows = []
    for status, job, when in jobs:
        sql_status = "queued" if status in ("queued", "scheduled", "retrying") else status
        rows.append(
            {
                "queue": job.queue,
                "task_name": job.name,
                "task_id": job.id,
                "payload": _payload(job, status),
                "status": sql_status,
                "priority": 0,
                "run_at": job.run_at or job.enqueued_at,
                "attempts": 0 if sql_status == "queued" else 1,
                "lease_owner": "bench:1" if status == "processing" else None,
                "lease_expires_at": when + timedelta(hours=3) if status == "processing" else None,
                "created_at": job.enqueued_at,
                "updated_at": when,
                "last_error": "RuntimeError: boom" if status == "failed" else None,
            }
        )
    with table._ready().begin() as conn:
        for i in range(0, len(rows), 1000):
            conn.execute(insert(table.tables.jobs).values(rows[i : i + 1000]))
    if table.dialect == "postgresql":
        # As autovacuum leaves a table after a bulk insert: statistics, and the visibility
        # map that lets counts read the index only.
        with table.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM ANALYZE {table.tables.jobs.name}")


# -- timing --------------------------------------------------------------------------------------


def reads(store: JobStore) -> dict[str, Callable[[], Any]]:
    def q(**kw: Any) -> Callable[[], Any]:
        return lambda: store.jobs(JobQuery(**kw))

    out: dict[str, Callable[[], Any]] = {"page, all statuses": q()}
    for status in MIX:
        out[f"page, {status}"] = q(status=status)
    out.update(
        {
            "page, completed, by worker": q(status="completed", worker=WORKERS[3]),
            "page, all, by worker": q(worker=WORKERS[3]),
            "page, failed, by queue": q(status="failed", queue="mail"),
            "page, all, by text (1%)": q(text="VIP"),
            "page, completed, by text (1%)": q(status="completed", text="vip"),
            "page, completed, by text (none)": q(status="completed", text="nobody@nowhere"),
            "page, all, by text (none)": q(text="nobody@nowhere"),
            "page, completed, offset 1000": q(status="completed", offset=1000),
            "status_counts": store.status_counts,
            "queue_stats": store.queue_stats,
            "throughput(60)": lambda: store.throughput(60),
        }
    )
    return out


def time_reads(store: JobStore, runs: int) -> dict[str, tuple[float, str]]:
    results: dict[str, tuple[float, str]] = {}
    for name, read in reads(store).items():
        read()  # warm-up (caches, compiled statements, scripts)
        times = []
        value: Any = None
        for _ in range(runs):
            started = time.perf_counter()
            value = read()
            times.append((time.perf_counter() - started) * 1000)
        note = ""
        if hasattr(value, "jobs"):
            note = f"{len(value.jobs)} jobs" + (f", searched {value.searched}" if value.searched else "")
        results[name] = (statistics.median(times), note)
    return results


def pages(some_job: str) -> dict[str, str]:
    """The dashboard's pages, by name: path."""
    return {
        "GET /queues": "/queues",
        "GET /jobs": "/jobs",
        "GET /jobs?status=completed": "/jobs?status=completed",
        "GET /jobs?worker=...": f"/jobs?worker={WORKERS[3]}",
        "GET /jobs?q=vip (1%)": "/jobs?q=vip",
        "GET /jobs?q=... (none)": "/jobs?q=nobody%40nowhere",
        "GET /jobs?status=completed&page=20": "/jobs?status=completed&page=20",
        "GET /failed": "/failed",
        "GET /scheduled": "/scheduled",
        "GET /workers": "/workers",
        "GET /jobs/<id>": f"/jobs/{some_job}",
        "GET /metrics": "/metrics",
    }


def time_pages(queue: dict[str, Any], some_job: str, runs: int) -> dict[str, float]:
    """Median ms of each dashboard page of an app on ``queue`` (a config's queue section)."""
    from starlette.testclient import TestClient

    from unified_jobs import Config, Jobs
    from unified_jobs.dashboard import Credentials, create_app

    app = Jobs(Config.from_dict({"workers": {"mode": "BackgroundQueue"}, "queue": queue}))
    client = TestClient(create_app(app, credentials=Credentials()), client=("127.0.0.1", 1))
    results: dict[str, float] = {}
    try:
        for name, path in pages(some_job).items():
            response = client.get(path)  # warm-up
            if response.status_code != 200:
                sys.exit(f"{name}: HTTP {response.status_code}: {response.text[:500]}")
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                client.get(path)
                times.append((time.perf_counter() - started) * 1000)
            results[name] = statistics.median(times)
    finally:
        app.shutdown()
    return results


def _flag(ms: float) -> str:
    return "" if ms < 100 else "  <-- over 100 ms" if ms < 200 else "  <-- OVER BUDGET (200 ms)"


def run(
    name: str,
    make: Callable[[], JobStore],
    fill: Callable[[Any, Any], None],
    n: int,
    runs: int,
    queue: dict[str, Any],
) -> None:
    store = make()
    jobs = plan(n)
    started = time.perf_counter()
    fill(store, jobs)
    print(
        f"\n{name}: filled {n} jobs in {time.perf_counter() - started:.1f} s; counts {store.status_counts()}"
    )
    for read, (ms, note) in time_reads(store, runs).items():
        print(f"  {read:34} {ms:8.1f} ms   {note}{_flag(ms)}", flush=True)
    print(f"  the dashboard's pages ({name}):")
    for page, ms in time_pages(queue, jobs[0][1].id, runs).items():
        print(f"  {page:34} {ms:8.1f} ms{_flag(ms)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--only", default="redis,postgres,sqlite")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/5")
    opts = parser.parse_args()
    kinds = set(opts.only.split(","))
    print(f"{opts.jobs} jobs, median of {opts.runs} runs; SEARCH_LIMIT {SEARCH_LIMIT}")
    if "redis" in kinds:
        import redis

        from unified_jobs.adapters.celery.kinds.redis import RedisJobStore

        client = redis.Redis.from_url(opts.redis_url)
        foreign = [k for k in client.scan_iter(count=1000) if not k.startswith(b"unified_jobs:")][:3]
        if foreign:
            sys.exit(
                f"{opts.redis_url} holds keys that are not this benchmark's ({foreign}); pick an empty one"
            )
        client.flushdb()
        try:
            run(
                "Redis",
                lambda: RedisJobStore(opts.redis_url, 86_400, shares_broker=True),
                fill_redis,
                opts.jobs,
                opts.runs,
                {"kind": "Redis", "uri": opts.redis_url},
            )
        finally:
            client.flushdb()
    if "postgres" in kinds or "sqlite" in kinds:
        from unified_jobs.adapters.celery.kinds.sql import SqlJobStore
        from unified_jobs.adapters.sql.engine import get_engine
        from unified_jobs.adapters.sql.schema import drop_schema, tables_for

        prefix = f"ujbmon_{uuid.uuid4().hex[:8]}_"
        if "postgres" in kinds:
            try:
                queue = {"kind": "Postgres", "uri": PG, "table_prefix": prefix}
                run("Postgres", lambda: SqlJobStore(PG, prefix), fill_sql, opts.jobs, opts.runs, queue)
            finally:
                drop_schema(get_engine(PG), tables_for(prefix))
        if "sqlite" in kinds:
            with tempfile.TemporaryDirectory(prefix="ujbmon-") as folder:
                uri = f"sqlite:///{folder}/monitor.db"
                queue = {"kind": "Sqlite", "uri": uri, "table_prefix": prefix}
                run("SQLite", lambda: SqlJobStore(uri, prefix), fill_sql, opts.jobs, opts.runs, queue)


if __name__ == "__main__":
    main()
