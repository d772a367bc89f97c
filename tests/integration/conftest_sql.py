"""Helpers and fixtures for the SQL queue tests (imported by ``test_sql_*.py``).

Each test gets its own table prefix (so its own tables, and on Postgres its own NOTIFY
channel), and on SQLite its own database file; Postgres tables are dropped afterwards.
Worker subprocesses run in their own session and are SIGKILLed as a group at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import Engine, select

from tests.integration.sql_celery_app import make_app
from unified_jobs.adapters.sql import broker_url
from unified_jobs.adapters.sql.engine import get_engine
from unified_jobs.adapters.sql.schema import Tables, drop_schema, ensure_schema_on, tables_for

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))
PG_URI = os.environ.get("UJ_TEST_PG_URI", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = bool(os.environ.get("CI"))
BACKENDS = [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"]


def require_postgres() -> None:
    """Skip when PostgreSQL does not answer; fail instead when ``CI`` is set."""
    import psycopg

    try:
        psycopg.connect(PG_URI, connect_timeout=2).close()
    except psycopg.Error as exc:
        reason = f"PostgreSQL is not reachable at {PG_URI}: {exc}"
        if IN_CI:
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
        pytest.skip(f"{reason}; start it to run this test")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the main process and its pool children (the whole process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it takes longer than ``timeout``."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill()


@dataclass
class SqlQueue:
    """One isolated queue (own tables) on one backend, with helpers to drive it."""

    kind: str
    db_uri: str
    tmp_path: Path
    prefix: str = field(default_factory=lambda: f"ujt_{uuid4().hex[:10]}_")
    lease_sec: float = 30.0
    workers: list[Worker] = field(default_factory=list)

    @property
    def broker(self) -> str:
        return broker_url("Postgres" if self.kind == "postgres" else "Sqlite", self.db_uri)

    @property
    def results(self) -> Path:
        return self.tmp_path / "results.txt"

    @property
    def tables(self) -> Tables:
        return tables_for(self.prefix)

    @property
    def engine(self) -> Engine:
        return get_engine(self.db_uri)

    def options(self, **extra: Any) -> dict[str, Any]:
        return {"table_prefix": self.prefix, "lease_sec": self.lease_sec, **extra}

    def producer(self, **extra: Any) -> Any:
        return make_app(self.broker, self.options(**extra))

    def start_worker(self, name: str, *args: str, concurrency: int = 2, wait: bool = True) -> Worker:
        env = {
            **os.environ,
            "UJ_SQL_BROKER": self.broker,
            "UJ_SQL_RESULTS": str(self.results),
            "UJ_SQL_OPTIONS": json.dumps(self.options()),
        }
        log = self.tmp_path / f"worker-{name}.log"
        cmd = [
            CELERY,
            "-A",
            "tests.integration.sql_celery_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "-l",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            *args,
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        worker = Worker(name, proc, log)
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: Worker, timeout: float = 30) -> None:
        def ready() -> bool:
            if worker.proc.poll() is not None:
                pytest.fail(f"worker {worker.name} exited early:\n{worker.log.read_text()[-3000:]}")
            return " ready." in worker.log.read_text(errors="replace")

        wait_for(ready, timeout, f"worker {worker.name} to be ready", interval=0.1)

    def events(self, kind: str) -> list[tuple[str, int, float]]:
        """(job, pid, time) of each ``kind`` line ("start" or "done") in the results file."""
        if not self.results.exists():
            return []
        out = []
        for line in self.results.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == kind:
                out.append((parts[1], int(parts[2]), float(parts[3])))
        return out

    def done_counts(self) -> Counter[str]:
        return Counter(job for job, _, _ in self.events("done"))

    def rows(self) -> list[Any]:
        jobs = self.tables.jobs
        with self.engine.begin() as conn:
            return list(conn.execute(select(jobs).order_by(jobs.c.id)).all())

    def status_counts(self) -> Counter[str]:
        return Counter(r.status for r in self.rows())

    def ensure_schema(self) -> None:
        ensure_schema_on(self.engine, self.tables)

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        if self.kind == "postgres":
            drop_schema(self.engine, self.tables)


@pytest.fixture(params=BACKENDS, name="sqlq")
def sqlq_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlQueue]:
    """An isolated SQL queue on each backend; its workers are killed at teardown."""
    if request.param == "postgres":
        require_postgres()
        queue = SqlQueue("postgres", PG_URI, tmp_path)
    else:
        queue = SqlQueue("sqlite", f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path)
    try:
        yield queue
    finally:
        queue.close()


def two_owners(engine: Engine, prefix: str, jobs: int, lease_sec: float = 1.0) -> tuple[Any, Any, Tables]:
    """The lease engine without a transport: two owners ("me", "other") of a fresh table of
    ``engine``'s, which holds ``jobs`` queued rows (task ids ``j0``, ``j1``, ...)."""
    from unified_jobs.adapters.sql.leases import Leases, utcnow
    from unified_jobs.adapters.sql.options import SqlOptions
    from unified_jobs.adapters.sql.queries import queries_for

    tables = tables_for(prefix)
    ensure_schema_on(engine, tables)
    queries, options = queries_for(tables, engine.dialect.name), SqlOptions(lease_sec=lease_sec)
    me, other = Leases(engine, queries, options, "me"), Leases(engine, queries, options, "other")
    for n in range(jobs):
        now = utcnow()
        job: dict[str, Any] = {"task_name": "t", "task_id": f"j{n}", "priority": 0, "run_at": now, "now": now}
        me.enqueue(queue="q", payload="{}", **job)
    return me, other, tables
