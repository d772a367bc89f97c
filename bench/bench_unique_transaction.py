"""What unique jobs and transactional enqueue cost, against a plain ``perform_later`` and plain
Celery's ``apply_async``, on Redis, Postgres and SQLite, in the same run.

    .venv/bin/python bench/bench_unique_transaction.py [--jobs 2000] [--kinds Redis,Postgres,Sqlite]

Enqueue rate from one process (no worker runs; the queues are emptied between runs), each
figure with its ratio to the plain ``perform_later`` of the same kind:

- celery: a plain Celery app's ``apply_async`` on the same broker (kombu's own transport on
  Redis; our SQL transport, the only Celery one with leases, on Postgres and SQLite);
- perform_later: no guarantee beyond the job's;
- unique_key: every job with a key of its own (each one is taken, none refused);
- unique, refused: the same key every time (the first job holds it; every other call is refused
  and gets its handle);
- app txn + perform_later: one application row inserted and committed, then the job enqueued
  without ``transaction=`` (the baseline for the next line);
- app txn + transaction=: the same with ``transaction=conn``: on the SQL kinds the row is written
  in that transaction (one commit for both); on Redis it is enqueued after the commit.

The application's database is the queue's own on the SQL kinds and a SQLite file on Redis.
Uses Redis database 8, tables ``ujb_*`` in the test database, and files in /tmp.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, text  # noqa: E402

import unified_jobs.adapters.sql  # noqa: E402,F401  (registers the ujsql transport for plain Celery)
from bench.queue_harness import Noop, plain_app  # noqa: E402
from unified_jobs import Config, Jobs  # noqa: E402

REDIS = "redis://127.0.0.1:6379/8"
PG = "postgresql://postgres@127.0.0.1:5432/test"
PREFIX = "ujb_"


metadata = MetaData()
orders = Table("ujb_orders", metadata, Column("id", Integer, primary_key=True), Column("note", String(20)))


def setup(kind: str, folder: Path) -> tuple[Jobs, Any, str]:
    """The unified_jobs app, the no-op task of a plain Celery app on the same broker, and the
    app database URL."""
    from unified_jobs.adapters.sql import broker_url, ensure_schema, transport_options

    if kind == "Redis":
        queue: dict[str, Any] = {"kind": kind, "uri": REDIS}
        plain, task = plain_app(REDIS)
        app_db = f"sqlite:///{folder}/app.db"
    else:
        uri = PG if kind == "Postgres" else f"sqlite:///{folder}/jobs.db"
        queue = {"kind": kind, "uri": uri, "table_prefix": PREFIX}
        ensure_schema(uri, PREFIX)
        plain, task = plain_app(broker_url(kind, uri))
        plain.conf.broker_transport_options = transport_options(table_prefix=PREFIX)
        app_db = uri.replace("postgresql://", "postgresql+psycopg://", 1)
    jobs = Jobs(Config.from_dict({"workers": {"mode": "BackgroundQueue"}, "queue": queue}))
    jobs.register(Noop)
    return jobs, task, app_db


def empty(jobs: Jobs, kind: str) -> None:
    bridge = jobs.celery_bridge()
    assert bridge.kind is not None
    if kind == "Redis":
        with jobs.celery.connection_for_write() as conn:
            conn.default_channel.client.flushdb()
    else:
        with bridge.kind.job_table().engine.begin() as conn:  # our queue's and plain Celery's rows
            conn.execute(text(f"DELETE FROM {PREFIX}jobs"))


def rate(n: int, one: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(n):
        one(i)
    return n / (time.perf_counter() - start)


def measure(kind: str, n: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="ujb-"))
    jobs, task, app_db = setup(kind, folder)
    engine = create_engine(app_db)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    row = iter(range(10**9))

    def in_txn(transactional: bool) -> Callable[[int], object]:
        def one(i: int) -> object:
            with engine.begin() as conn:
                conn.execute(orders.insert().values(id=next(row), note="x"))
                if transactional:
                    return Noop.perform_later({"sent": i}, transaction=conn)
            # Without transaction=: after the commit (inside it, SQLite's one writer would wait
            # for its own transaction's lock).
            return Noop.perform_later({"sent": i})

        return one

    cases: dict[str, Callable[[int], object]] = {
        "celery apply_async": lambda i: task.apply_async((i,)),
        "perform_later": lambda i: Noop.perform_later({"sent": i}),
        "unique_key": lambda i: Noop.perform_later({"sent": i}, unique_key=f"k{i}"),
        "unique, refused": lambda i: Noop.perform_later({"sent": i}, unique_key="same"),
        "app txn + perform_later": in_txn(False),
        "app txn + transaction=": in_txn(True),
    }
    results: dict[str, float] = {}
    for name, one in cases.items():
        empty(jobs, kind)
        one(-1)  # connections and queue declarations made before the clock starts
        results[name] = rate(n, one)
    empty(jobs, kind)
    metadata.drop_all(engine)
    engine.dispose()
    jobs.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--kinds", default="Redis,Postgres,Sqlite")
    opts = parser.parse_args()
    print(f"enqueue rate, {opts.jobs} jobs per figure, one process; ratio to perform_later of the same kind")
    for kind in opts.kinds.split(","):
        results = measure(kind, opts.jobs)
        base = results["perform_later"]
        print(f"\n{kind}")
        for name, value in results.items():
            print(f"  {name:<26} {value:>9,.0f} jobs/s   {value / base:5.2f}x")
        txn = results["app txn + transaction="] / results["app txn + perform_later"]
        print(f"  {'transaction= vs no transaction= (both with the app row)':<26}  {txn:5.2f}x")


if __name__ == "__main__":
    main()
