"""One driver per system: how it enqueues (one job per call, and in bulk where the system has a
bulk API), the command lines of its worker processes, and how its queue is emptied between
figures. Each imports its app module (``bench.peers.*_app``) when made, in the process that
measures it (``measure``), with ``BENCH_BACKEND`` and the rest already in the environment.

Worker concurrency: two worker processes running one job at a time each, or the closest:

- unified_jobs, Celery: a prefork worker, ``--concurrency 2`` (a parent and two children);
- uj-processes: unified_jobs with ``--pool processes --concurrency 2`` (two worker processes
  that each take and run their own jobs, and their supervisor, which runs none);
- huey: ``huey_consumer -w 2 -k process`` (two worker processes);
- taskiq: ``taskiq worker --workers 2 --max-async-tasks 1`` (two processes, one task at a time);
- dramatiq: ``dramatiq --processes 2 --threads 1``;
- procrastinate: its worker is one asyncio process (``--concurrency N`` runs N jobs in it); to
  use both cores as the others do, two ``procrastinate worker --concurrency 1`` processes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench.peers import settings

BIN = Path(sys.executable).parent
CELERY_OPTS = ["--without-mingle", "--without-gossip", "--without-heartbeat"]


def flush_redis() -> None:
    client = redis.Redis.from_url(settings.redis_url())
    try:
        client.flushdb()
    finally:
        client.close()


def clean_tables(tables: list[str]) -> None:
    """Empty the tables of this backend's database that exist (Postgres: TRUNCATE; SQLite: DELETE)."""
    if settings.backend() == "postgres":
        import psycopg

        with psycopg.connect(settings.pg_url(), autocommit=True) as conn:
            present = [t for t in tables if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0]]
            if present:
                conn.execute(f"TRUNCATE {', '.join(present)} RESTART IDENTITY CASCADE")
    else:
        conn = sqlite3.connect(settings.sqlite_path(), timeout=30)
        try:
            names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            for table in tables:
                if table in names:
                    conn.execute(f"DELETE FROM {table}")
            conn.commit()
        finally:
            conn.close()


class Driver:
    """A system on the current backend."""

    name = ""
    #: The bulk API measured, or None: the system has none (its "many" helpers loop over the
    #: one-job call), printed as "-".
    bulk_api: str | None = None
    #: Worker concurrency, as started (for the report).
    concurrency = ""

    def setup(self) -> None:
        """Once, before the figures (schemas, connections)."""

    def close(self) -> None:
        """Once, after the figures."""

    def send(self, n: int, gap: float = 0.0) -> None:
        """``n`` jobs, one per call, ``gap`` seconds apart."""
        for _ in range(n):
            self.send_one(time.time())
            if gap:
                time.sleep(gap)

    def send_one(self, sent: float) -> None:
        raise NotImplementedError

    def send_bulk(self, sents: list[float]) -> None:
        raise NotImplementedError

    def clean(self) -> None:
        """Empty the queue (no worker runs)."""
        raise NotImplementedError

    def workers(self) -> list[list[str]]:
        """The command line of each worker process to start."""
        raise NotImplementedError


class UnifiedJobs(Driver):
    name = "unified_jobs"
    bulk_api = "perform_all_later"
    concurrency = "prefork, --concurrency 2"

    def __init__(self) -> None:
        from bench.peers import uj_app
        from bench.queue_harness import Noop

        self.app, self.worker = uj_app, Noop

    def setup(self) -> None:
        if settings.backend() != "redis":
            from unified_jobs.adapters.sql import ensure_schema

            ensure_schema(self.app.queue()["uri"], "unified_jobs_")

    def send_one(self, sent: float) -> None:
        self.worker.perform_later({"sent": sent})

    def send_bulk(self, sents: list[float]) -> None:
        self.worker.perform_all_later([{"sent": s} for s in sents])

    def clean(self) -> None:
        if settings.backend() == "redis":
            flush_redis()
            return
        from unified_jobs.adapters.sql.schema import tables_for

        t = tables_for("unified_jobs_")
        clean_tables([x.name for x in (t.jobs, t.cancels, t.schedules, t.workers, t.bindings, t.control)])

    def workers(self) -> list[list[str]]:
        return [
            [
                str(BIN / "unified-jobs"),
                "--app",
                "bench.peers.uj_app:jobs",
                "start",
                "--worker",
                "-q",
                "bench-uj",
                "--concurrency",
                "2",
                "--loglevel",
                "WARNING",
                "--",
                *CELERY_OPTS,
            ]
        ]


class UnifiedJobsProcesses(UnifiedJobs):
    """unified_jobs whose worker is ``start --worker --pool processes``: two processes that
    each take and run their own jobs, under a supervisor."""

    name = "uj-processes"
    concurrency = "--pool processes, --concurrency 2"

    def workers(self) -> list[list[str]]:
        (argv,) = super().workers()
        at = argv.index("--concurrency")
        return [[*argv[:at], "--pool", "processes", *argv[at:]]]


class Celery(Driver):
    name = "celery"
    bulk_api = "group(...).apply_async()"
    concurrency = "prefork, --concurrency 2"

    def __init__(self) -> None:
        from bench.peers import celery_app

        self.task = celery_app.plain_noop

    def send_one(self, sent: float) -> None:
        self.task.apply_async((sent,))

    def send_bulk(self, sents: list[float]) -> None:
        from celery import group

        group(self.task.s(s) for s in sents).apply_async()

    def clean(self) -> None:
        if settings.backend() == "redis":
            flush_redis()
        else:
            clean_tables(["kombu_message"])

    def workers(self) -> list[list[str]]:
        return [
            [
                str(BIN / "celery"),
                "-A",
                "bench.peers.celery_app:plain",
                "worker",
                "-Q",
                "bench-plain",
                "--concurrency",
                "2",
                "--loglevel",
                "WARNING",
                *CELERY_OPTS,
            ]
        ]


class Huey(Driver):
    name = "huey"
    concurrency = "huey_consumer -w 2 -k process"

    def __init__(self) -> None:
        from bench.peers import huey_app

        self.huey, self.task = huey_app.huey, huey_app.noop

    def send_one(self, sent: float) -> None:
        self.task(sent)

    def clean(self) -> None:
        if settings.backend() == "redis":
            flush_redis()
        else:
            self.huey.flush()

    def workers(self) -> list[list[str]]:
        return [[str(BIN / "huey_consumer"), "bench.peers.huey_app.huey", "-w", "2", "-k", "process", "-q"]]


class Taskiq(Driver):
    name = "taskiq"
    concurrency = "taskiq worker --workers 2 --max-async-tasks 1"

    def __init__(self) -> None:
        from bench.peers import taskiq_app

        self.broker, self.task = taskiq_app.broker, taskiq_app.noop
        self.loop = asyncio.new_event_loop()

    def setup(self) -> None:
        self.loop.run_until_complete(self.broker.startup())

    def close(self) -> None:
        self.loop.run_until_complete(self.broker.shutdown())
        self.loop.close()

    def send(self, n: int, gap: float = 0.0) -> None:
        async def go() -> None:
            for _ in range(n):
                await self.task.kiq(time.time())
                if gap:
                    await asyncio.sleep(gap)

        self.loop.run_until_complete(go())

    def clean(self) -> None:
        flush_redis()

    def workers(self) -> list[list[str]]:
        return [
            [
                str(BIN / "taskiq"),
                "worker",
                "bench.peers.taskiq_app:broker",
                "--workers",
                "2",
                "--max-async-tasks",
                "1",
                "--log-level",
                "WARNING",
            ]
        ]


class Dramatiq(Driver):
    name = "dramatiq"
    concurrency = "dramatiq --processes 2 --threads 1"

    def __init__(self) -> None:
        from bench.peers import dramatiq_app

        self.actor = dramatiq_app.noop

    def send_one(self, sent: float) -> None:
        self.actor.send(sent)

    def clean(self) -> None:
        flush_redis()

    def workers(self) -> list[list[str]]:
        return [
            [
                str(BIN / "dramatiq"),
                "bench.peers.dramatiq_app",
                "--processes",
                "2",
                "--threads",
                "1",
                "--queues",
                "bench-dramatiq",
            ]
        ]


class Procrastinate(Driver):
    name = "procrastinate"
    bulk_api = "batch_defer"
    concurrency = "2 x procrastinate worker --concurrency 1"

    def __init__(self) -> None:
        from bench.peers import procrastinate_app

        self.app, self.task = procrastinate_app.app, procrastinate_app.noop

    def setup(self) -> None:
        import psycopg

        self.app.open()
        with psycopg.connect(settings.pg_url()) as conn:
            exists = conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0]
        if not exists:
            self.app.schema_manager.apply_schema()

    def close(self) -> None:
        self.app.close()

    def send_one(self, sent: float) -> None:
        self.task.defer(sent=sent)

    def send_bulk(self, sents: list[float]) -> None:
        self.task.batch_defer(*({"sent": s} for s in sents))

    def clean(self) -> None:
        clean_tables(["procrastinate_jobs", "procrastinate_workers", "procrastinate_periodic_defers"])

    def workers(self) -> list[list[str]]:
        argv = [str(BIN / "procrastinate"), "--app=bench.peers.procrastinate_app.app", "worker"]
        return [[*argv, "--concurrency", "1", "--queues", "bench-procrastinate"]] * 2


DRIVERS: dict[str, type[Driver]] = {
    d.name: d for d in (UnifiedJobs, UnifiedJobsProcesses, Celery, Huey, Taskiq, Dramatiq, Procrastinate)
}

#: The systems measured on each backend, unified_jobs (prefork, then processes) and Celery first.
BACKENDS: dict[str, list[str]] = {
    "redis": ["unified_jobs", "uj-processes", "celery", "huey", "taskiq", "dramatiq"],
    "postgres": ["unified_jobs", "uj-processes", "celery", "procrastinate", "huey"],
    "sqlite": ["unified_jobs", "uj-processes", "celery", "huey"],
}


def make(name: str) -> Driver:
    return DRIVERS[name]()


def describe(name: str) -> dict[str, Any]:
    cls = DRIVERS[name]
    return {"bulk_api": cls.bulk_api, "concurrency": cls.concurrency}
