"""The harness the contract suite runs against: one parameter per adapter.

Each backend gives a ``Jobs`` app built by ``contract_app.create_app`` and a way to wait for
the records its jobs write. Queue backends add a real worker process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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
from tests.contract import contract_app
from tests.procs import WorkerProcess, unified_jobs_worker
from unified_jobs import Jobs


@dataclass
class Harness:
    backend: str
    jobs: Jobs
    record: Path
    #: Jobs have run by the time perform_later returns.
    inline: bool = False

    def records(self) -> list[dict[str, Any]]:
        text = self.record.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records()
            if predicate(recs) or time.monotonic() > deadline:
                return recs
            time.sleep(0.02)

    def wait_for_count(
        self, n: int, timeout: float = 20.0, worker: str | None = None
    ) -> list[dict[str, Any]]:
        def enough(recs: list[dict[str, Any]]) -> bool:
            return len([r for r in recs if worker is None or r["worker"] == worker]) >= n

        return self.wait_for(enough, timeout)


BACKENDS: dict[str, dict[str, Any]] = {
    "inline": {"workers": {"mode": "ForegroundBlocking"}},
    "inprocess": {"workers": {"mode": "BackgroundAsync", "concurrency": 4}},
    "redis": {
        "workers": {"mode": "BackgroundQueue"},
        "queue": {"kind": "Redis", "uri": redis_url("contract")},
    },
    "postgres": {
        "workers": {"mode": "BackgroundQueue"},
        "queue": {"kind": "Postgres", "uri": PG_URL, "table_prefix": sql_prefix("contract")},
    },
    "sqlite": {
        "workers": {"mode": "BackgroundQueue"},
        # the file is per session: see the harness
        "queue": {
            "kind": "Sqlite",
            "uri": "sqlite:///<session tmp>/contract.db",
            "table_prefix": sql_prefix("contract"),
        },
    },
}


class QueueWorkers:
    """One real worker process per queue backend, shared by the session's contract tests."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: dict[str, tuple[WorkerProcess, Path]] = {}

    def get(self, backend: str, config: dict[str, Any]) -> Path:
        if backend not in self.running:
            record = self.folder / f"{backend}-record.jsonl"
            env = {"UJ_CONTRACT_CONFIG": json.dumps(config), "UJ_CONTRACT_RECORD": str(record)}
            worker = unified_jobs_worker(
                "tests.contract.contract_app:app_from_env",
                env,
                self.folder / f"{backend}-worker.log",
                "--concurrency",
                "4",
                "--",
                "--without-mingle",
                "--without-gossip",
            )
            worker.wait_for_output("ready.")
            self.running[backend] = (worker, record)
        return self.running[backend][1]

    def stop_all(self) -> None:
        for worker, _ in self.running.values():
            worker.stop()


@pytest.fixture(scope="session")
def queue_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueueWorkers]:
    workers = QueueWorkers(tmp_path_factory.mktemp("contract-workers"))
    yield workers
    workers.stop_all()


@pytest.fixture(params=list(BACKENDS))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    backend: str = request.param
    config = BACKENDS[backend]
    if backend in ("redis", "postgres", "sqlite"):
        if backend == "redis":
            require_service("Redis", REDIS_HOST, REDIS_PORT)
            flush_redis_db("contract")
        elif backend == "postgres":
            require_service("PostgreSQL", PG_HOST, PG_PORT)
            clear_sql_jobs(PG_URL, sql_prefix("contract"))
        else:
            folder = request.getfixturevalue("queue_workers").folder
            queue = {**config["queue"], "uri": f"sqlite:///{folder}/contract.db"}
            config = {**config, "queue": queue}
            clear_sql_jobs(queue["uri"], sql_prefix("contract"))
        record = request.getfixturevalue("queue_workers").get(backend, config)
        record.write_text("")
    else:
        record = tmp_path / "record.jsonl"
    jobs = contract_app.create_app(config, str(record))
    yield Harness(backend, jobs, record, inline=backend == "inline")
    jobs.shutdown(wait=True, timeout=10)
