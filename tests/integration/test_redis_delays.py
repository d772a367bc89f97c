"""Delayed jobs on the Redis kind wait in Redis (a sorted set per queue), never unacked in a
worker: they run once however long the delay and however short the visibility timeout."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import REDIS_HOST, REDIS_PORT, flush_redis_db, redis_url, require_service
from tests.contract.contract_app import Echo, Mail, SlowRetry, create_app
from tests.procs import WorkerPool, read_records, wait_until
from unified_jobs import Jobs
from unified_jobs.adapters.celery.kinds import redis_transport
from unified_jobs.adapters.celery.kinds.redis_transport import DELAYED_INDEX, DELAYED_PREFIX, Mover

pytestmark = [
    pytest.mark.redis,
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings("ignore:Task name .* is already registered"),
]

APP = "tests.contract.contract_app:app_from_env"
FAST = ("--", "--without-mingle", "--without-gossip")
DB = "redis_delays"


def config(**queue: Any) -> dict[str, Any]:
    return {"workers": {"mode": "BackgroundQueue"}, "queue": {"kind": "Redis", "uri": redis_url(DB), **queue}}


@pytest.fixture
def client() -> Iterator[Any]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    flush_redis_db(DB)
    c = redis.Redis.from_url(redis_url(DB))
    yield c
    c.close()
    flush_redis_db(DB)


#: Short, so that a delay four times as long keeps the test short too.
VISIBILITY = 3


@pytest.fixture
def setup(client: Any, tmp_path: Path) -> Iterator[tuple[Jobs, Path, dict[str, str]]]:
    record = tmp_path / "record.jsonl"
    cfg = config(visibility_timeout=VISIBILITY)
    jobs = create_app(cfg, str(record))
    yield jobs, record, {"UJ_CONTRACT_RECORD": str(record), "UJ_CONTRACT_CONFIG": json.dumps(cfg)}
    jobs.shutdown()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerPool]:
    pool = WorkerPool(APP, tmp_path)
    yield pool
    pool.stop_all()


def delayed(client: Any, queue: str = "default") -> int:
    return int(client.zcard(DELAYED_PREFIX + queue))


def listed(client: Any, queue: str = "default") -> int:
    return sum(int(client.llen(key)) for key in client.keys(f"{queue}*") if client.type(key) == b"list")


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def test_200_jobs_delayed_past_the_visibility_timeout_run_once_each_and_not_early(
    setup: tuple[Jobs, Path, dict[str, str]], client: Any, workers: Any
) -> None:
    jobs, record, env = setup
    pool = [workers(env, "--concurrency", "2", *FAST) for _ in range(2)]
    for w in pool:
        w.wait_for_output("ready.")
    delay = 4 * VISIBILITY  # kombu would restore a message it delivered this long ago
    due = time.time() + delay
    handles = Echo.perform_all_later([{"n": i} for i in range(200)], wait=timedelta(seconds=delay))
    cancelled = Echo.perform_later({"n": -1}, wait=timedelta(seconds=delay))
    assert jobs.cancel(cancelled)
    # A retry with backoff (3 s) waits in the sorted set as well.
    retried = SlowRetry.perform_later({"fail_times": 1})
    assert wait_until(lambda: delayed(client) == 202, timeout=15), delayed(client)
    assert listed(client) == 0, "nothing waits in a list, so no worker holds a delayed job"
    assert jobs.status(handles[0]) == "scheduled" and jobs.status(cancelled) == "cancelled"
    kind: Any = jobs.celery_bridge().kind
    assert kind.queue_lengths(jobs.celery, ["default"])[0] == {"default": 202}

    ids = {h.id for h in handles}
    done = lambda: len([r for r in read_records(record) if r["job"] in ids]) >= 200  # noqa: E731
    assert wait_until(done, timeout=70), pool[0].output()[-3000:]
    time.sleep(1.0)  # would any job run twice, or the cancelled one at all, it would show by now
    records = read_records(record)
    runs = Counter(r["job"] for r in records if r["job"] in ids)
    assert set(runs) == ids and max(runs.values()) == 1
    early = [r for r in records if r["job"] in ids and r["at"] < due - 1.0]
    assert not early, f"{len(early)} ran early, the first {due - early[0]['at']:.2f} s before due"
    assert cancelled.id not in {r["job"] for r in records}
    attempts = [r["at"] for r in records if r["job"] == retried.id]
    assert len(attempts) == 2 and attempts[1] - attempts[0] >= 2.0, attempts
    assert client.zcard(DELAYED_INDEX) == 0 and delayed(client) == 0


def test_a_delayed_job_survives_the_restart_of_every_worker(
    setup: tuple[Jobs, Path, dict[str, str]], client: Any, workers: Any
) -> None:
    _, record, env = setup
    first = workers(env, "--concurrency", "1", *FAST)
    first.wait_for_output("ready.")
    # 8 s: the worker's warm stop takes seconds on a loaded machine, and the job must fall due
    # after it stopped.
    handle = Echo.perform_later({"n": 7}, wait=timedelta(seconds=8))
    assert first.stop() == 0
    assert handle.run_at is not None and time.time() < handle.run_at.timestamp(), "stopped too late"
    time.sleep(handle.run_at.timestamp() - time.time() + 0.5)  # due while no worker runs
    assert read_records(record) == [] and delayed(client) == 1
    workers(env, "--concurrency", "1", *FAST)
    assert wait_until(lambda: len(read_records(record)) >= 1, timeout=30)
    time.sleep(0.5)
    assert [r["job"] for r in read_records(record)] == [handle.id]
    assert delayed(client) == 0


def test_worker_memory_stays_flat_with_many_delayed_jobs_waiting(
    setup: tuple[Jobs, Path, dict[str, str]], client: Any, workers: Any
) -> None:
    jobs, record, env = setup
    worker = workers(env, "--concurrency", "1", *FAST)
    worker.wait_for_output("ready.")
    time.sleep(1.0)
    before = rss_kb(worker.proc.pid)
    # 100,000 took 41 s to enqueue here (~2,400 jobs/s on 2 cores, most of it Celery's
    # send_task and the job store's records) and left the RSS as it was; the suite's default
    # keeps within its time budget (UJ_DELAYED_JOBS=100000 for the full count).
    count, batch = int(os.environ.get("UJ_DELAYED_JOBS", "10000")), 1_000
    started = time.monotonic()
    for start in range(0, count, batch):
        Echo.perform_all_later([{"n": i} for i in range(start, start + batch)], wait=timedelta(hours=1))
    took = time.monotonic() - started
    time.sleep(2.0)  # a few rounds of the worker's mover
    after = rss_kb(worker.proc.pid)
    rate = count / took
    print(
        f"\nenqueued {count} delayed jobs in {took:.1f} s ({rate:.0f}/s); worker RSS {before} -> {after} kB"
    )
    assert delayed(client) == count and listed(client) == 0
    assert after - before < 5 * 1024, f"worker RSS grew {(after - before) / 1024:.1f} MB"
    kind: Any = jobs.celery_bridge().kind
    assert kind.queue_lengths(jobs.celery, ["default"]) == ({"default": count}, {})
    assert kind.purge_queues(jobs.celery, ["default"]) == {"default": count}
    assert delayed(client) == 0 and client.zcard(DELAYED_INDEX) == 0
    assert read_records(record) == []


def test_an_adopted_celery_apps_countdown_waits_in_the_sorted_set(
    monkeypatch: pytest.MonkeyPatch, client: Any, tmp_path: Path, workers: Any
) -> None:
    record = tmp_path / "legacy.jsonl"
    cfg = config()
    monkeypatch.setenv("UJ_LEGACY_CONFIG", json.dumps(cfg))
    monkeypatch.setenv("UJ_LEGACY_RECORD", str(record))
    sys.modules.pop("tests.integration.legacy_celery_app", None)
    legacy = importlib.import_module("tests.integration.legacy_celery_app")
    try:
        due = time.time() + 3
        legacy.add.apply_async((2, 3), countdown=3)  # routed to "math" by the app's own task_routes
        assert delayed(client, "math") == 1 and listed(client, "math") == 0
        env = {"UJ_LEGACY_CONFIG": json.dumps(cfg), "UJ_LEGACY_RECORD": str(record)}
        worker = workers(env, "--concurrency", "1", *FAST, app="tests.integration.legacy_celery_app:jobs")
        assert wait_until(lambda: len(read_records(record)) >= 1, timeout=30), worker.output()[-3000:]
        [run] = read_records(record)
        assert run["x"] == 2 and time.time() >= due - 1.0
        assert delayed(client, "math") == 0
    finally:
        legacy.jobs.shutdown()


def test_a_batch_of_delayed_and_immediate_jobs_is_all_or_nothing(
    setup: tuple[Jobs, Path, dict[str, str]], client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, _, _ = setup
    mixed = [{"n": i} for i in range(10)]
    Echo.perform_all_later(mixed, wait=timedelta(minutes=5))
    Echo.perform_all_later(mixed)
    assert delayed(client) == 10 and listed(client) == 10

    # One batch of both kinds, as perform_all_later publishes it (run_at differs per message).
    app = jobs.celery
    with app.producer_or_acquire() as producer, producer.batch(max_size=100):
        app.send_task("contract.Echo", kwargs={"n": 1}, queue="default", producer=producer)
        app.send_task("contract.Echo", kwargs={"n": 2}, queue="default", producer=producer, countdown=300)
    assert delayed(client) == 11 and listed(client) == 11

    # Cut the batch's MULTI/EXEC off half way: Redis drops the transaction, so nothing lands.
    original = redis.connection.Connection.send_packed_command

    def cut_off(self: Any, command: Any, check_health: bool = True) -> None:
        data = b"".join(command) if isinstance(command, list) else command
        if not data.startswith(b"*1\r\n$5\r\nMULTI\r\n"):
            return original(self, command, check_health)  # type: ignore[no-any-return]
        self._sock.sendall(data[: len(data) // 2])
        self.disconnect()
        raise redis.ConnectionError("cut off half way (test)")

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", cut_off)
    for countdowns in ((None, 300, None, 300), (300, None, 300, None)):
        with (
            pytest.raises(Exception, match=r"batch|cut off"),
            app.producer_or_acquire() as producer,
            producer.batch(max_size=100),
        ):
            for n, countdown in enumerate(countdowns):
                app.send_task(
                    "contract.Echo",
                    kwargs={"n": n},
                    queue="default",
                    producer=producer,
                    countdown=countdown,
                )
    monkeypatch.undo()
    assert delayed(client) == 11 and listed(client) == 11, "none of the batch, delayed or not"


def test_counts_include_delayed_jobs_and_purge_deletes_only_the_queues_own(
    setup: tuple[Jobs, Path, dict[str, str]], client: Any
) -> None:
    jobs, _, _ = setup
    Echo.perform_all_later([{"n": 1}, {"n": 2}])
    Echo.perform_all_later([{"n": 3}, {"n": 4}, {"n": 5}], wait=timedelta(minutes=5))
    Mail.perform_later({"n": 6}, wait=timedelta(minutes=5))
    assert jobs.status(Mail.perform_later({"n": 7}, wait=timedelta(minutes=5))) == "scheduled"
    kind: Any = jobs.celery_bridge().kind
    assert kind.queue_lengths(jobs.celery, ["default", "mail"]) == ({"default": 5, "mail": 2}, {})
    assert kind.purge_queues(jobs.celery, ["default"]) == {"default": 5}
    assert delayed(client) == 0 and listed(client) == 0
    assert client.zrange(DELAYED_INDEX, 0, -1) == [b"mail"], "the other queue's delayed job stays"
    assert kind.queue_lengths(jobs.celery, ["default", "mail"]) == ({"default": 0, "mail": 2}, {})


def test_the_mover_moves_due_jobs_once_survives_redis_down_and_is_not_forked(
    setup: tuple[Jobs, Path, dict[str, str]], client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    jobs, _, _ = setup
    # Due in 3 s: long enough that no other mover of this process could take them first on a
    # slow machine, before this one's rounds below.
    Echo.perform_all_later([{"n": i} for i in range(3)], wait=timedelta(seconds=3))
    assert delayed(client) == 3
    with jobs.celery.connection() as conn:  # not a pooled one: leaving the block closes it
        mover = Mover(conn.default_channel, interval=60)
        healthy = mover.client
        # nothing listens there
        mover.client = redis.Redis(host=REDIS_HOST, port=6398, retry=Retry(NoBackoff(), 0))
        with caplog.at_level(logging.WARNING):
            assert mover.round() == 0 and mover.round() == 0
        warnings = [r for r in caplog.records if "cannot move due delayed jobs" in r.getMessage()]
        assert len(warnings) == 1, "one warning per outage"
        mover.client = healthy
        time.sleep(3.0)
        assert mover.round() == 3 and mover.round() == 0, "each job is moved once"
        assert listed(client) == 3 and delayed(client) == 0 and client.zcard(DELAYED_INDEX) == 0

        redis_transport._ensure_mover(conn.default_channel)  # as a worker's basic_consume does
        assert redis_transport._mover is not None and redis_transport._mover.alive
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os._exit(0 if redis_transport._mover is None else 1)
        assert os.waitpid(pid, 0)[1] == 0, "a forked child must not inherit the mover"
        running = redis_transport._mover
    # the connection's channel closed: its mover stops
    assert wait_until(lambda: not running.thread.is_alive(), timeout=15)
