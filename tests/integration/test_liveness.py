"""Worker liveness with real worker processes: the heartbeat in the queue's store (SQLite and
Redis), the heartbeat file, and ``unified-jobs doctor --workers`` as a probe: it passes for a
live worker and for one whose only slot is busy, and fails, naming it, for a worker that is
alive but stopped consuming (``celery control cancel_consumer``: the process and its heartbeat
go on, its polls stop), until it consumes again.

Beats every half second and a stale-after of three seconds keep the module short.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REDIS_HOST, REDIS_PORT, flush_redis_db, redis_url, require_service, sql_prefix
from tests.contract.contract_app import Sleep, create_app
from tests.procs import BIN, ROOT, WorkerPool, WorkerProcess, read_records, wait_until
from unified_jobs import Jobs
from unified_jobs.core.heartbeat import judge
from unified_jobs.core.monitor import WorkerBeat

pytestmark = pytest.mark.timeout(120)

APP = "tests.contract.contract_app:app_from_env"
INTERVAL = 0.5
STALE_AFTER = 3.0
#: Long enough for a stall to show: past stale-after, plus a beat or two, plus a margin.
STALL_SHOWS_WITHIN = STALE_AFTER + 4 * INTERVAL + 5
QUEUES = ("default", "async", "mail")


@dataclass
class Running:
    """A worker process of this module, and what the test process needs to reach it."""

    node: str
    worker: WorkerProcess
    env: dict[str, str]
    record: Path
    jobs: Jobs
    heartbeat_file: Path

    def beats(self) -> list[WorkerBeat]:
        return [b for b in self.jobs.adapter.store.workers() if b.extra.get("node") == self.node]

    def wait_for_beat(self, check: Callable[[WorkerBeat], bool], timeout: float = 10.0) -> WorkerBeat:
        found: list[WorkerBeat] = []

        def seen() -> bool:
            found[:] = [b for b in self.beats() if check(b)]
            return bool(found)

        assert wait_until(seen, timeout, interval=0.1), f"{self.node}: no such beat in {self.beats()}"
        return found[0]


def start(folder: Path, name: str, queue: dict[str, Any]) -> Iterator[Running]:
    record = folder / f"{name}-record.jsonl"
    config = {
        "workers": {
            "mode": "BackgroundQueue",
            "heartbeat_interval": INTERVAL,
            "stale_after": STALE_AFTER,
            "heartbeat_file": str(folder / f"{name}-{{pid}}.json"),
        },
        "queue": queue,
    }
    env = {"UJ_CONTRACT_CONFIG": json.dumps(config), "UJ_CONTRACT_RECORD": str(record)}
    jobs = create_app(config, str(record))
    pool = WorkerPool(APP, folder)
    node = f"liveness-{name}@{os.uname().nodename}"
    # One slot, one message prefetched: a running job leaves the worker no room to poll.
    worker = pool(
        env,
        "--concurrency",
        "1",
        "--hostname",
        node,
        "--",
        "--prefetch-multiplier",
        "1",
        "--without-mingle",
        "--without-gossip",
        name=name,
    )
    try:
        worker.wait_for_output("ready.")
        yield Running(node, worker, env, record, jobs, folder / f"{name}-{worker.proc.pid}.json")
    finally:
        pool.stop_all()
        jobs.shutdown()


@pytest.fixture(scope="module")
def sqlite_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("liveness-sqlite")
    queue = {"kind": "Sqlite", "uri": f"sqlite:///{folder}/queue.db", "table_prefix": sql_prefix("liveness")}
    yield from start(folder, "sqlite", queue)


@pytest.fixture(scope="module")
def redis_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    flush_redis_db("liveness")
    folder = tmp_path_factory.mktemp("liveness-redis")
    yield from start(folder, "redis", {"kind": "Redis", "uri": redis_url("liveness")})


def doctor(env: dict[str, str], *args: str, app: bool = True) -> subprocess.CompletedProcess[str]:
    """``unified-jobs [--app APP] doctor --workers ARGS``, as a probe runs it."""
    argv = [str(BIN / "unified-jobs"), *(("--app", APP) if app else ()), "doctor", "--workers", *args]
    return subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def probe_until(env: dict[str, str], code: int, *args: str, app: bool = True) -> str:
    """Run the probe until it exits with ``code`` (within ``STALL_SHOWS_WITHIN``); its output."""
    runs: list[subprocess.CompletedProcess[str]] = []

    def exits_so() -> bool:
        runs.append(doctor(env, *args, app=app))
        return runs[-1].returncode == code

    assert wait_until(exits_so, STALL_SHOWS_WITHIN, interval=0.2), (
        f"doctor --workers {' '.join(args)} did not exit {code}; last ({runs[-1].returncode}):\n"
        f"{runs[-1].stdout}{runs[-1].stderr}"
    )
    return runs[-1].stdout


def test_a_live_sqlite_worker_passes_the_probe(sqlite_worker: Running, tmp_path: Path) -> None:
    beat = sqlite_worker.wait_for_beat(lambda b: b.polled_at is not None)
    assert (beat.pid, beat.concurrency, beat.current) == (sqlite_worker.worker.proc.pid, 1, ())
    assert set(QUEUES) <= set(beat.queues)
    out = doctor(sqlite_worker.env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert beat.id in out.stdout and "1 live worker(s), none stalled" in out.stdout
    # One worker, by its node name, by its pid, or the workers of this host.
    for selection in (["--worker", sqlite_worker.node], ["--worker", str(beat.pid)], ["--this-host"]):
        assert doctor(sqlite_worker.env, *selection).returncode == 0, selection
    missing = doctor(sqlite_worker.env, "--worker", "nobody@nowhere")
    assert missing.returncode == 1
    assert "no worker [--worker nobody@nowhere] has a live heartbeat" in missing.stdout
    # A queue no worker ever beat into: no live worker, so the probe fails.
    config = json.loads(sqlite_worker.env["UJ_CONTRACT_CONFIG"])
    config["queue"]["uri"] = f"sqlite:///{tmp_path}/empty.db"
    empty = doctor({**sqlite_worker.env, "UJ_CONTRACT_CONFIG": json.dumps(config)})
    assert empty.returncode == 1 and "no worker at all has a live heartbeat" in empty.stdout, empty.stdout


def test_a_clean_stop_removes_the_beat_and_the_file(sqlite_worker: Running) -> None:
    beat = sqlite_worker.wait_for_beat(lambda b: True)
    assert sqlite_worker.heartbeat_file.is_file()
    assert json.loads(sqlite_worker.heartbeat_file.read_text())["id"] == beat.id
    assert sqlite_worker.worker.stop() == 0  # a warm shutdown
    assert sqlite_worker.beats() == []
    assert not sqlite_worker.heartbeat_file.exists()


def test_a_live_redis_worker_passes_the_probe_from_the_store_and_from_its_file(redis_worker: Running) -> None:
    beat = redis_worker.wait_for_beat(lambda b: b.polled_at is not None)
    assert judge(beat, STALE_AFTER).verdict == "ok"
    store = doctor(redis_worker.env, "--this-host")
    assert store.returncode == 0, store.stdout + store.stderr
    assert beat.id in store.stdout
    # The file needs neither the app nor the store.
    from_file = doctor({}, "--heartbeat-file", str(redis_worker.heartbeat_file), app=False)
    assert from_file.returncode == 0, from_file.stdout + from_file.stderr
    assert beat.id in from_file.stdout and f"stale after {STALE_AFTER:g} s" in from_file.stdout


def test_a_worker_whose_every_slot_is_busy_is_not_stalled(redis_worker: Running) -> None:
    seconds = STALE_AFTER + 6 * INTERVAL
    handle = redis_worker.jobs.perform_later(Sleep, {"n": 1, "seconds": seconds})
    # While its one slot is taken, the worker asks for no more jobs: its poll gap grows...
    beat = redis_worker.wait_for_beat(
        lambda b: handle.id in b.current and (judge(b, STALE_AFTER).poll_gap or 0) > STALE_AFTER,
        timeout=seconds + 5,
    )
    assert judge(beat, STALE_AFTER).verdict == "busy"
    # ...and the probe passes all the same.
    busy = doctor(redis_worker.env)
    assert busy.returncode == 0, busy.stdout + busy.stderr
    assert "busy" in busy.stdout
    assert wait_until(
        lambda: any(r["worker"] == "sleep_end" for r in read_records(redis_worker.record)),
        timeout=seconds + 10,
    )


def test_a_worker_that_stops_consuming_fails_the_probe_by_name(redis_worker: Running) -> None:
    control = redis_worker.jobs.celery.control
    beat = redis_worker.wait_for_beat(lambda b: judge(b, STALE_AFTER).verdict == "ok")
    for queue in beat.queues:
        replies = control.cancel_consumer(queue, destination=[redis_worker.node], reply=True, timeout=5)
        assert replies, f"{redis_worker.node} did not answer cancel_consumer {queue}"
    try:
        # The process lives and beats, but takes from its queues no more (no FETCH, no BRPOP).
        out = probe_until(redis_worker.env, 1)
        assert f"{beat.id} on {beat.host} is stalled: has not asked its queues for jobs" in out, out
        assert redis_worker.worker.proc.poll() is None
        from_file = doctor({}, "--heartbeat-file", str(redis_worker.heartbeat_file), app=False)
        assert from_file.returncode == 1 and "is stalled" in from_file.stdout, from_file.stdout
    finally:
        for queue in beat.queues:
            control.add_consumer(queue, destination=[redis_worker.node], reply=True, timeout=5)
    # Consuming again: the probe passes again.
    assert "none stalled" in probe_until(redis_worker.env, 0)
