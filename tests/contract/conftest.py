"""The harness the contract suite runs against: one parameter per adapter.

Each backend gives a ``Jobs`` app built by ``contract_app.create_app`` and a way to wait for
the records its jobs write. Queue backends add a real worker process. The recording backend is
the test double of ``unified_jobs.testing``: its jobs run when the harness runs the queued jobs
(``Harness.run_queued``), with the recorder's own ``perform_enqueued_jobs``, as a user's test does.

Where backends legitimately differ (when a job runs, whether delays take real time, where a
job's error goes), each declares it once in ``RUNS``; tests ask ``harness.runs``, never the
backend's name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
    drop_rabbitmq_vhost,
    flush_redis_db,
    make_rabbitmq_vhost,
    purge_rabbitmq_queues,
    redis_url,
    require_rabbitmq,
    require_service,
    sql_prefix,
)
from tests.contract import contract_app
from tests.procs import PrivateRedis, WorkerProcess, stop_together, unified_jobs_worker
from unified_jobs import JobHandle, Jobs, Worker
from unified_jobs.testing import JobRecorder


@dataclass(frozen=True)
class Runs:
    """How a backend runs the jobs it is given, where backends legitimately differ."""

    #: Where and when jobs run, as a phrase for skip reasons and messages.
    where: str
    #: A job has run by the time ``perform_later`` returns (ForegroundBlocking).
    at_enqueue: bool = False
    #: Nothing runs until the test runs the queued jobs (``Harness.run_queued``).
    on_drain: bool = False
    #: ``wait=``/``run_at=`` and retry backoffs take real time; else the job (or its next
    #: attempt) runs at once.
    waits: bool = True
    #: A job's last error is raised to the code that ran it (``perform_later``'s caller, or
    #: ``run_queued``'s); else it is only kept in the failed store.
    raises: bool = False
    #: Jobs run in the caller's thread until they end, so nothing can reach a running one.
    in_callers_thread: bool = False
    #: Jobs run in worker processes, which outlive a job that ends its process (``os._exit``).
    in_worker_process: bool = False
    #: Each worker process is a node of its own, which beats with one slot (``--pool
    #: processes``), where prefork's one beat holds every slot.
    beats_per_process: bool = False


_QUEUE_WORKER = Runs(where="in a real worker process", in_worker_process=True)

RUNS: dict[str, Runs] = {
    "inline": Runs(
        where="in the caller's thread before perform_later returns",
        at_enqueue=True,
        waits=False,  # InlineAdapter.capabilities.delay is False; retries run at once
        raises=True,
        in_callers_thread=True,
    ),
    "inprocess": Runs(where="in a pool of threads in the test process"),
    # JobRecorder.perform_enqueued_jobs: nothing runs until it is called; then every recorded
    # job runs in the caller's thread, "Delays and priorities are not honoured", a failed
    # attempt "is retried at once", and "A job's exception propagates".
    "recording": Runs(
        where="in the test's thread, inside the recorder's perform_enqueued_jobs",
        on_drain=True,
        waits=False,
        raises=True,
        in_callers_thread=True,
    ),
    "redis": _QUEUE_WORKER,
    "postgres": _QUEUE_WORKER,
    "sqlite": _QUEUE_WORKER,
    "rabbitmq": _QUEUE_WORKER,
}
#: The queue kinds again, their worker started with ``--pool processes`` (processes that each
#: take and run their own jobs, under a supervisor) instead of Celery's prefork pool.
PROCESSES = "-processes"
QUEUE_KINDS = ("redis", "postgres", "sqlite", "rabbitmq")
_SUPERVISED = Runs(
    where="in real worker processes under a supervisor", in_worker_process=True, beats_per_process=True
)
RUNS.update({f"{kind}{PROCESSES}": _SUPERVISED for kind in QUEUE_KINDS})

#: perform_enqueued_jobs stops at 100 jobs by default, a guard against jobs that enqueue
#: themselves without end; the suite enqueues up to 200 at once, so it passes a higher limit=,
#: as the recorder's error message says to.
DRAIN_LIMIT = 10_000


@dataclass
class Harness:
    backend: str
    jobs: Jobs
    record: Path
    runs: Runs
    #: The recorder the recording backend runs its jobs with.
    recorder: JobRecorder | None = field(default=None, repr=False)
    #: The log of the worker process that runs its jobs (queue backends).
    log: Path | None = field(default=None, repr=False)

    def worker_log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` of the worker's log (for a failure's message), or "" if none."""
        if self.log is None or not self.log.exists():
            return ""
        tail = self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return f"last {len(tail)} lines of {self.log}:\n" + "\n".join(tail)

    def records(self) -> list[dict[str, Any]]:
        text = self.record.read_text(encoding="utf-8")
        # Jobs append while this reads: a last line without its newline is still being written.
        complete = text.split("\n")[:-1]
        return [json.loads(line) for line in complete if line.strip()]

    def run_queued(self) -> None:
        """Run the jobs that wait for the test to run them (the recorder's); else nothing.

        A job's error propagates, as from the recorder's ``perform_enqueued_jobs``.
        """
        if self.recorder is not None:
            self.recorder.perform_enqueued_jobs(limit=DRAIN_LIMIT)

    def wait_until(self, check: Callable[[], Any], timeout: float = 20.0) -> Any:
        """``check()`` once it is truthy (or its last value at ``timeout``), after running the
        queued jobs where the test runs them: there nothing runs by itself, so it is not waited for."""
        self.run_queued()
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value or self.runs.on_drain or time.monotonic() > deadline:
                return value
            time.sleep(0.02)

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        recs: list[dict[str, Any]] = []

        def check() -> bool:
            recs[:] = self.records()
            return predicate(recs)

        self.wait_until(check, timeout)
        return recs

    def wait_for_count(
        self, n: int, timeout: float = 20.0, worker: str | None = None
    ) -> list[dict[str, Any]]:
        def enough(recs: list[dict[str, Any]]) -> bool:
            return len([r for r in recs if worker is None or r["worker"] == worker]) >= n

        return self.wait_for(enough, timeout)

    def run_failing(
        self,
        worker: type[Worker[Any]],
        args: dict[str, Any],
        error: type[BaseException],
        match: str | None = None,
    ) -> str:
        """Enqueue a job that is to end failed, and return its id.

        Where a job's last error is raised to the code that ran it (``runs.raises``), check
        that it is: from ``perform_later`` (ForegroundBlocking, where the one new failed job
        gives the id) or from ``run_queued`` (the recorder). Elsewhere the job fails in the
        background; wait for it with the job store.
        """
        if self.runs.at_enqueue:
            before = {f.id for f in self.jobs.failed(worker)}
            with pytest.raises(error, match=match):
                worker.perform_later(args)
            (job_id,) = {f.id for f in self.jobs.failed(worker)} - before
            return job_id
        handle: JobHandle = worker.perform_later(args)
        if self.runs.raises:
            with pytest.raises(error, match=match):
                self.run_queued()
        return handle.id


# Workers beat every second (heartbeat_interval), so that test_heartbeats.py sees them soon.
BACKENDS: dict[str, dict[str, Any]] = {
    "inline": {"workers": {"mode": "ForegroundBlocking"}},
    "inprocess": {"workers": {"mode": "BackgroundAsync", "concurrency": 4, "heartbeat_interval": 1}},
    # the app's own mode is replaced by the recorder for the whole test (see the harness)
    "recording": {"workers": {"mode": "ForegroundBlocking"}},
    "redis": {
        "workers": {"mode": "BackgroundQueue", "heartbeat_interval": 1},
        "queue": {"kind": "Redis", "uri": redis_url("contract")},
    },
    "postgres": {
        "workers": {"mode": "BackgroundQueue", "heartbeat_interval": 1},
        "queue": {"kind": "Postgres", "uri": PG_URL, "table_prefix": sql_prefix("contract")},
    },
    "sqlite": {
        "workers": {"mode": "BackgroundQueue", "heartbeat_interval": 1},
        # the file is per session: see the harness
        "queue": {
            "kind": "Sqlite",
            "uri": "sqlite:///<session tmp>/contract.db",
            "table_prefix": sql_prefix("contract"),
        },
    },
    "rabbitmq": {
        "workers": {"mode": "BackgroundQueue", "heartbeat_interval": 1},
        # the vhost is per session: see the harness
        "queue": {
            "kind": "RabbitMQ",
            "uri": "amqp://guest:guest@127.0.0.1:5672/<session vhost>",
            "store_uri": redis_url("rabbitmq_contract"),
        },
    },
}

# Each "-processes" backend has its own namespace (a private Redis for the Redis queue and the
# RabbitMQ kind's job store, its own table prefix, SQLite file and vhost), so that its worker
# and the prefork one never take each other's jobs.
BACKENDS.update(
    {
        f"redis{PROCESSES}": {**BACKENDS["redis"], "queue": {"kind": "Redis", "uri": "<private redis>"}},
        f"postgres{PROCESSES}": {
            **BACKENDS["postgres"],
            "queue": {**BACKENDS["postgres"]["queue"], "table_prefix": sql_prefix("contract_processes")},
        },
        f"sqlite{PROCESSES}": BACKENDS["sqlite"],
        f"rabbitmq{PROCESSES}": BACKENDS["rabbitmq"],
    }
)

#: The queues the contract app's workers use (RabbitMQ: emptied before each test).
CONTRACT_QUEUES = ["default", "async", "mail"]


class QueueWorkers:
    """One real worker process per queue backend, shared by the session's contract tests."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: dict[str, tuple[WorkerProcess, Path]] = {}

    def get(self, backend: str, config: dict[str, Any]) -> Path:
        if backend not in self.running:
            record = self.folder / f"{backend}-record.jsonl"
            env = {"UJ_CONTRACT_CONFIG": json.dumps(config), "UJ_CONTRACT_RECORD": str(record)}
            pool = ["--pool", "processes"] if backend.endswith(PROCESSES) else []
            worker = unified_jobs_worker(
                "tests.contract.contract_app:app_from_env",
                env,
                self.log(backend),
                "--concurrency",
                "4",
                *pool,
                "--",
                "--without-mingle",
                "--without-gossip",
            )
            worker.wait_for_output("ready.")
            self.running[backend] = (worker, record)
        return self.running[backend][1]

    def log(self, backend: str) -> Path:
        return self.folder / f"{backend}-worker.log"

    def stop(self, backend: str) -> None:
        if backend in self.running:
            self.running.pop(backend)[0].stop()

    def stop_all(self) -> None:
        stop_together([worker for worker, _ in self.running.values()])


@pytest.fixture(scope="session")
def queue_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueueWorkers]:
    workers = QueueWorkers(tmp_path_factory.mktemp("contract-workers"))
    yield workers
    workers.stop_all()


@pytest.fixture(scope="session")
def rabbitmq_vhost(queue_workers: QueueWorkers) -> Iterator[str]:
    """A private vhost for the session's RabbitMQ tests; its URI. Deleted (after its worker
    stopped) at the end."""
    require_rabbitmq()
    uri = make_rabbitmq_vhost("contract")
    yield uri
    queue_workers.stop("rabbitmq")
    drop_rabbitmq_vhost(uri)


@pytest.fixture(scope="session")
def rabbitmq_processes_vhost(queue_workers: QueueWorkers) -> Iterator[str]:
    """``rabbitmq_vhost`` for the rabbitmq-processes backend."""
    require_rabbitmq()
    uri = make_rabbitmq_vhost("contract_processes")
    yield uri
    queue_workers.stop(f"rabbitmq{PROCESSES}")
    drop_rabbitmq_vhost(uri)


@pytest.fixture(scope="session")
def processes_redis(queue_workers: QueueWorkers) -> Iterator[PrivateRedis]:
    """A Redis of the session's own for the "-processes" backends (every database number of
    the shared one is taken): the Redis queue's, and the RabbitMQ kind's job store."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)  # redis-server is installed
    server = PrivateRedis(queue_workers.folder)
    yield server
    queue_workers.stop(f"redis{PROCESSES}")
    queue_workers.stop(f"rabbitmq{PROCESSES}")
    server.stop()


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


@pytest.fixture(params=list(BACKENDS))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    backend: str = request.param
    config = BACKENDS[backend]
    kind = backend.removesuffix(PROCESSES)
    processes = backend != kind
    if kind in QUEUE_KINDS:
        if kind == "rabbitmq":
            require_service("Redis", REDIS_HOST, REDIS_PORT)  # its job store
            uri = request.getfixturevalue("rabbitmq_processes_vhost" if processes else "rabbitmq_vhost")
            queue = {**config["queue"], "uri": uri}
            if processes:
                queue["store_uri"] = request.getfixturevalue("processes_redis").url.rsplit("/", 1)[0] + "/1"
                _flush(queue["store_uri"])
            else:
                flush_redis_db("rabbitmq_contract")
            config = {**config, "queue": queue}
            purge_rabbitmq_queues(uri, CONTRACT_QUEUES)
        elif kind == "redis":
            require_service("Redis", REDIS_HOST, REDIS_PORT)
            if processes:
                url = request.getfixturevalue("processes_redis").url
                config = {**config, "queue": {**config["queue"], "uri": url}}
                _flush(url)
            else:
                flush_redis_db("contract")
        elif kind == "postgres":
            require_service("PostgreSQL", PG_HOST, PG_PORT)
            clear_sql_jobs(PG_URL, config["queue"]["table_prefix"])
        else:
            folder = request.getfixturevalue("queue_workers").folder
            queue = {**config["queue"], "uri": f"sqlite:///{folder}/{backend}.db"}
            config = {**config, "queue": queue}
            clear_sql_jobs(queue["uri"], sql_prefix("contract"))
        workers = request.getfixturevalue("queue_workers")
        record = workers.get(backend, config)
        record.write_text("")
        log: Path | None = workers.log(backend)
    else:
        record, log = tmp_path / "record.jsonl", None
    jobs = contract_app.create_app(config, str(record))
    recorder = JobRecorder(jobs).start() if backend == "recording" else None
    runs = RUNS[backend]
    # what is declared above agrees with what the adapters declare
    assert jobs.adapter.supports_delay or not runs.waits, f"{backend}: declared to wait, but ignores delays"
    assert not (runs.on_drain and jobs.adapter.capabilities.cancel_running), (
        f"{backend}: cancels running jobs"
    )
    try:
        yield Harness(backend, jobs, record, runs, recorder, log)
    finally:
        if recorder is not None:
            recorder.stop()
        jobs.shutdown(wait=True, timeout=10)
