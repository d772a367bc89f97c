"""``start --worker --pool processes``: the supervisor and its worker processes, on a real
queue of every kind (a Postgres table prefix, a SQLite file, a Redis of the test's own, a
RabbitMQ vhost). What a job lives through under it (retries,
time limits, a process that dies mid-job) is the contract suite's "-processes" backends; how it
stops is ``tests/faults/test_stop.py``'s."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.contract.contract_app import Echo, Sleep, create_app
from tests.procs import QUEUE_KINDS, WorkerPool, own_queue, read_records, wait_until
from unified_jobs import Jobs

pytestmark = pytest.mark.timeout(120)

APP = "tests.contract.contract_app:app_from_env"


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture(params=QUEUE_KINDS)
def setup(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Jobs, WorkerPool, dict[str, str], Path]]:
    with own_queue(request.param, tmp_path, "processes") as queue:
        record = tmp_path / "record.jsonl"
        record.touch()
        config = {"workers": {"mode": "BackgroundQueue"}, "queue": queue}
        env = {"UJ_CONTRACT_RECORD": str(record), "UJ_CONTRACT_CONFIG": json.dumps(config)}
        jobs = create_app(config, str(record))
        pool = WorkerPool(APP, tmp_path)
        try:
            yield jobs, pool, env, record
        finally:
            pool.stop_all()
            jobs.shutdown()


def start(pool: WorkerPool, env: dict[str, str], n: int = 2, *extra: str) -> Any:
    worker = pool(env, "--concurrency", str(n), "--pool", "processes", *extra, "--", "--without-mingle")
    wait_until(lambda: worker.output().count("ready.") >= n, 60)
    assert worker.output().count("ready.") >= n, worker.output()[-3000:]
    return worker


def test_each_process_is_a_celery_node_of_its_own(setup: Any) -> None:
    jobs, pool, env, record = setup
    worker = start(pool, env, 2, "--hostname", "shop@box")
    assert len(children(worker.proc.pid)) == 2
    replies: dict[str, Any] = {}
    for _ in range(10):  # the broadcast reaches a node once its consumer is up
        for reply in jobs.celery.control.inspect(timeout=1.0).ping() or {}:
            replies.update(reply if isinstance(reply, dict) else {reply: None})
        if len(replies) >= 2:
            break
    assert set(replies) == {"shop-1@box", "shop-2@box"}, worker.output()[-3000:]
    ids = [Echo.perform_later({"n": n}).id for n in range(20)]
    assert wait_until(lambda: {r["job"] for r in read_records(record)} == set(ids), 30)
    pids = {r["pid"] for r in read_records(record)}
    assert pids <= set(children(worker.proc.pid)), "a job ran outside the supervisor's processes"
    assert worker.proc.pid not in pids, "the supervisor ran a job"
    assert wait_until(lambda: all(jobs.status(i) == "completed" for i in ids), 10)
    queue = jobs.config.queue
    if queue is not None and queue.kind == "Redis":  # every message acked (with its outcome)
        import redis

        client = redis.Redis.from_url(queue.uri)
        try:
            assert wait_until(lambda: client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0, 10)
        finally:
            client.close()


def test_a_process_that_dies_is_forked_again(setup: Any) -> None:
    _jobs, pool, env, record = setup
    worker = start(pool, env, 2)
    before = children(worker.proc.pid)
    os.kill(before[0], signal.SIGKILL)
    assert wait_until(
        lambda: len(children(worker.proc.pid)) == 2 and before[0] not in children(worker.proc.pid), 20
    )
    assert "worker process 1 (pid" in worker.output() or "worker process 2 (pid" in worker.output()
    ids = [Echo.perform_later({"n": n}).id for n in range(10)]
    assert wait_until(lambda: {r["job"] for r in read_records(record)} >= set(ids), 30), worker.output()[
        -3000:
    ]
    assert worker.proc.poll() is None


def test_sigkill_of_the_supervisor_ends_its_processes_and_loses_no_job(setup: Any) -> None:
    jobs, pool, env, record = setup
    worker = start(pool, env, 2)
    kids = children(worker.proc.pid)
    running = Sleep.perform_later({"n": 1, "seconds": 3}).id
    assert wait_until(lambda: any(r["worker"] == "sleep_start" for r in read_records(record)), 20)
    os.kill(worker.proc.pid, signal.SIGKILL)  # the supervisor alone, not its group
    worker.proc.wait(10)
    assert wait_until(lambda: not any(alive(k) for k in kids), 10), "a worker process outlived its supervisor"
    # The job it was running comes back as after any crash, and a new worker runs it.
    if jobs.config.queue is not None and jobs.config.queue.kind == "Redis":
        return  # after visibility_timeout (an hour by default): tests/faults cover Redis crashes
    started = time.monotonic()
    start(pool, env, 1)
    assert wait_until(
        lambda: [r["job"] for r in read_records(record) if r["worker"] == "sleep_end"] == [running], 60
    ), pool.started[-1].output()[-3000:]
    assert time.monotonic() - started < 60


def test_a_warm_stop_finishes_the_running_jobs_and_exits_zero(setup: Any) -> None:
    _jobs, pool, env, record = setup
    worker = start(pool, env, 2)
    kids = children(worker.proc.pid)
    ids = [Sleep.perform_later({"n": n, "seconds": 1.5}).id for n in range(2)]
    assert wait_until(lambda: len([r for r in read_records(record) if r["worker"] == "sleep_start"]) == 2, 20)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0, worker.output()[-3000:]
    assert sorted(r["job"] for r in read_records(record) if r["worker"] == "sleep_end") == sorted(ids)
    assert not any(alive(k) for k in kids)


def test_a_process_that_cannot_start_stops_the_worker_with_its_status(setup: Any) -> None:
    _jobs, pool, env, _record = setup
    worker = pool(env, "--concurrency", "2", "--pool", "processes", "--", "--no-such-option")
    code = worker.proc.wait(60)
    assert code == 2, worker.output()[-3000:]  # Celery's usage error, not a fork loop
    assert "before it was ready: stopping the worker" in worker.output()
