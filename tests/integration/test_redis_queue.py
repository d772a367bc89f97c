"""BackgroundQueue on Redis with real worker processes (`unified-jobs start --worker`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import REDIS_HOST, REDIS_PORT, flush_redis_db, redis_url, require_service
from tests.contract.contract_app import Echo, Mail, Sleep, create_app
from tests.integration.unrunnable_messages import assert_failed_with_body_and_reason, publish_unrunnable
from tests.procs import ROOT, WorkerPool, read_records, wait_until
from unified_jobs.errors import EnqueueError

pytestmark = pytest.mark.timeout(180)

APP = "tests.contract.contract_app:app_from_env"
FAST = ("--", "--without-mingle", "--without-gossip")


def config(**queue: Any) -> dict[str, Any]:
    return {
        "workers": {"mode": "BackgroundQueue"},
        "queue": {"kind": "Redis", "uri": redis_url("redis"), **queue},
    }


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    flush_redis_db("redis")
    record = tmp_path / "record.jsonl"
    record.touch()
    return record, {"UJ_CONTRACT_RECORD": str(record), "UJ_CONTRACT_CONFIG": json.dumps(config())}


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerPool]:
    pool = WorkerPool(APP, tmp_path)
    yield pool
    pool.stop_all()


def test_500_jobs_from_another_process_run_exactly_once(
    setup: tuple[Path, dict[str, str]], workers: Any
) -> None:
    record, env = setup
    worker = workers(env, "--concurrency", "2", *FAST)
    worker.wait_for_output("ready.")
    script = (
        "from tests.contract.contract_app import app_from_env, Echo\n"
        "app_from_env()\n"
        "ids = [Echo.perform_later({'n': i}).id for i in range(500)]\n"
        "print('\\n'.join(ids))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    ids = out.stdout.split()
    assert len(set(ids)) == 500
    assert wait_until(lambda: len(read_records(record)) >= 500, timeout=60), worker.output()[-3000:]
    time.sleep(0.5)  # would any job run twice, it would show by now
    runs = Counter(r["job"] for r in read_records(record))
    assert set(runs) == set(ids)
    assert max(runs.values()) == 1


def test_sigkilled_worker_loses_no_job(
    setup: tuple[Path, dict[str, str]], workers: Any, tmp_path: Path
) -> None:
    record, env = setup
    env["UJ_CONTRACT_CONFIG"] = json.dumps(config(visibility_timeout=8))
    jobs = create_app(json.loads(env["UJ_CONTRACT_CONFIG"]), str(record))
    ids = [Sleep.perform_later({"n": i, "seconds": 2}).id for i in range(20)]
    first = workers(
        env, "--concurrency", "2", "--", "--prefetch-multiplier", "1", "--without-mingle", "--without-gossip"
    )
    assert wait_until(lambda: sum(r["worker"] == "sleep_end" for r in read_records(record)) >= 4, timeout=60)
    first.kill()
    done_before = {r["job"] for r in read_records(record) if r["worker"] == "sleep_end"}
    assert len(done_before) < 20, "the kill must happen mid-way"
    second = workers(env, "--concurrency", "4", *FAST, name="second")

    def all_done() -> bool:
        return {r["job"] for r in read_records(record) if r["worker"] == "sleep_end"} >= set(ids)

    assert wait_until(all_done, timeout=120), second.output()[-3000:]
    jobs.shutdown()


def test_invalid_message_args_are_rejected_with_a_log_line_and_the_worker_goes_on(
    setup: tuple[Path, dict[str, str]], workers: Any
) -> None:
    record, env = setup
    jobs = create_app(config(), str(record))
    worker = workers(env, "--concurrency", "1", *FAST)
    worker.wait_for_output("ready.")
    # What another producer (or an old version of the code) might send: bypasses our validation.
    bad = jobs.celery.send_task("contract.Echo", kwargs={"n": "not a number"}, queue="default")
    Echo.perform_later({"n": 1})
    assert wait_until(lambda: len(read_records(record)) >= 1, timeout=30)
    worker.wait_for_output(f"job {bad.id} (contract.Echo) rejected, its arguments do not validate")
    assert [r["args"]["n"] for r in read_records(record)] == [1]
    jobs.shutdown()


def test_messages_a_worker_cannot_run_are_failed_jobs_with_their_body_and_reason(
    setup: tuple[Path, dict[str, str]], workers: Any
) -> None:
    record, env = setup
    jobs = create_app(config(), str(record))
    worker = workers(env, "--concurrency", "1", *FAST)
    worker.wait_for_output("ready.")
    publish_unrunnable(jobs)
    assert_failed_with_body_and_reason(jobs, record, worker)
    jobs.shutdown()


def test_redis_down_at_enqueue_is_a_clear_error_with_the_password_masked(tmp_path: Path) -> None:
    jobs = create_app(
        {
            "workers": {"mode": "BackgroundQueue"},
            "queue": {"kind": "Redis", "uri": "redis://:hunter2@127.0.0.1:6399/0"},
        },
        str(tmp_path / "r.jsonl"),
    )
    started = time.monotonic()
    with pytest.raises(EnqueueError) as info:
        Echo.perform_later({"n": 1})
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert "redis://:***@127.0.0.1:6399/0" in message and "hunter2" not in message
    assert "Nothing was enqueued" in message
    assert elapsed < 15, f"the retry must be short and bounded, took {elapsed:.1f}s"
    jobs.shutdown()


def test_a_worker_waits_for_redis_and_starts_consuming_when_it_comes_back(
    tmp_path: Path, workers: Any
) -> None:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    port = 6397
    uri = f"redis://127.0.0.1:{port}/0"
    record = tmp_path / "record.jsonl"
    cfg = {"workers": {"mode": "BackgroundQueue"}, "queue": {"kind": "Redis", "uri": uri}}
    env = {"UJ_CONTRACT_RECORD": str(record), "UJ_CONTRACT_CONFIG": json.dumps(cfg)}
    worker = workers(env, "--concurrency", "1", *FAST)
    worker.wait_for_output("Cannot connect to redis://", timeout=30)
    assert "6397" in worker.output() and "Trying again" in worker.output()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: _ping(port), timeout=10)
        jobs = create_app(cfg, str(record))
        Echo.perform_later({"n": 42})
        assert wait_until(lambda: len(read_records(record)) >= 1, timeout=60), worker.output()[-3000:]
        assert read_records(record)[0]["args"]["n"] == 42
        jobs.shutdown()
    finally:
        worker.stop()
        server.terminate()
        server.wait(10)


def _ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.2).ping())
    except redis.RedisError:
        return False


def test_dangerously_flush_empties_only_this_apps_queues(
    setup: tuple[Path, dict[str, str]], workers: Any
) -> None:
    record, env = setup
    jobs = create_app(config(), str(record))
    for i in range(5):
        Echo.perform_later({"n": i})
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=12)
    client.set("someone-elses-key", "keep me")
    client.lpush("another-apps-queue", "keep me too")
    env["UJ_CONTRACT_CONFIG"] = json.dumps(config(dangerously_flush=True))
    worker = workers(env, "--concurrency", "1", *FAST)
    worker.wait_for_output("ready.")
    worker.wait_for_output("dangerously_flush: deleted 5 queued job(s)")
    Echo.perform_later({"n": 100})
    assert wait_until(lambda: len(read_records(record)) >= 1, timeout=30)
    time.sleep(0.3)
    assert [r["args"]["n"] for r in read_records(record)] == [100]
    assert client.get("someone-elses-key") == b"keep me"
    assert client.lrange("another-apps-queue", 0, -1) == [b"keep me too"]
    client.close()
    jobs.shutdown()


def test_tag_selects_the_queues_of_tagged_workers(setup: tuple[Path, dict[str, str]], workers: Any) -> None:
    record, env = setup
    jobs = create_app(config(), str(record))
    worker = workers(env, "--tag", "email", "--concurrency", "1", *FAST)
    worker.wait_for_output("ready.")
    Echo.perform_later({"n": 1})
    Mail.perform_later({"n": 2})
    assert wait_until(lambda: len(read_records(record)) >= 1, timeout=30)
    time.sleep(0.5)
    assert [r["worker"] for r in read_records(record)] == ["mail"]
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=12)
    # untouched: still queued on "default" (kombu keeps one list per priority, "default\x06\x169"...)
    assert sum(client.llen(key) for key in client.keys("default*")) == 1
    client.close()
    jobs.shutdown()


def test_higher_priority_runs_first(setup: tuple[Path, dict[str, str]], workers: Any) -> None:
    record, env = setup
    jobs = create_app(config(), str(record))
    for n, priority in [(1, None), (2, 9), (3, 5), (4, 0)]:
        Echo.perform_later({"n": n}, priority=priority)
    worker = workers(
        env, "--concurrency", "1", "--", "--prefetch-multiplier", "1", "--without-mingle", "--without-gossip"
    )
    assert wait_until(lambda: len(read_records(record)) >= 4, timeout=30), worker.output()[-2000:]
    assert [r["args"]["n"] for r in read_records(record)] == [2, 3, 1, 4]  # no priority = 0
    jobs.shutdown()


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_async_perform_in_other_pools(setup: tuple[Path, dict[str, str]], workers: Any, pool: str) -> None:
    from tests.contract.contract_app import AsyncEcho

    record, env = setup
    jobs = create_app(config(), str(record))
    worker = workers(env, "--pool", pool, "--concurrency", "2", *FAST)
    for n in range(10):
        AsyncEcho.perform_later({"n": n})
    assert wait_until(lambda: len(read_records(record)) >= 10, timeout=30), worker.output()[-2000:]
    assert sorted(r["args"]["n"] for r in read_records(record)) == list(range(10))
    jobs.shutdown()


def test_start_worker_outside_background_queue_explains_and_fails(tmp_path: Path) -> None:
    env = {
        "UJ_CONTRACT_RECORD": str(tmp_path / "r.jsonl"),
        "UJ_CONTRACT_CONFIG": json.dumps({"workers": {"mode": "BackgroundAsync"}}),
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [str(Path(sys.executable).parent / "unified-jobs"), "--app", APP, "start", "--worker"],
        cwd=ROOT,
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert (
        "workers.mode is BackgroundAsync" in out.stderr and "no queue for a worker to consume" in out.stderr
    )
    assert "Traceback" not in out.stderr


def test_sigterm_is_a_warm_shutdown(setup: tuple[Path, dict[str, str]], workers: Any) -> None:
    """The job in progress finishes; the jobs not started stay queued for the next worker."""
    record, env = setup
    jobs = create_app(config(), str(record))
    worker = workers(env, "--concurrency", "1", "--", "--prefetch-multiplier", "1", "--without-mingle")
    worker.wait_for_output("ready.")
    ids = [Sleep.perform_later({"n": n, "seconds": 1.5}).id for n in range(3)]
    assert wait_until(lambda: any(r["worker"] == "sleep_start" for r in read_records(record)), timeout=30)
    worker.proc.send_signal(signal.SIGTERM)  # to the main process, as `kill PID` or an orchestrator does
    assert worker.proc.wait(30) == 0, worker.output()[-2000:]
    finished = [r["job"] for r in read_records(record) if r["worker"] == "sleep_end"]
    started = [r["job"] for r in read_records(record) if r["worker"] == "sleep_start"]
    assert finished == started == [ids[0]], "the job in progress must finish, and no other start"
    second = workers(env, "--concurrency", "2", *FAST, name="second")
    done = lambda: {r["job"] for r in read_records(record) if r["worker"] == "sleep_end"} == set(ids)  # noqa: E731
    assert wait_until(done, timeout=30), second.output()[-2000:]
    jobs.shutdown()


def test_a_unique_key_claimed_by_an_enqueuer_that_died_is_free_once_its_record_expires(
    setup: tuple[Path, dict[str, str]],
) -> None:
    """The claim and the publish are two steps on Redis: an enqueuer that dies between them
    leaves a record with only the key, which expires (CLAIM_TTL), and then frees the key."""
    from tests.contract.contract_app import UniqueEcho
    from unified_jobs.adapters.celery.kinds.redis import CLAIM_TTL, RedisJobStore

    record, _ = setup
    jobs = create_app(config(), str(record))
    try:
        store = jobs.adapter.store
        assert isinstance(store, RedisJobStore)
        orphan = jobs._build_job(UniqueEcho, {"n": 1}, None, None, None, None)
        assert store.claim_unique([orphan]) == {}  # ... and the enqueuer died here
        ttl = store.client.ttl(store.key(orphan.id))
        assert 0 < ttl <= CLAIM_TTL, "the orphan's record expires"
        again = UniqueEcho.perform_later({"n": 1})
        assert again.id == orphan.id, "until it expires, the key is held"
        store.client.delete(store.key(orphan.id))  # as its expiry does
        fresh = UniqueEcho.perform_later({"n": 1})
        assert fresh.id != orphan.id
        assert jobs.status(fresh) == "queued"
        # A job that was enqueued keeps its own record's life, not the claim's.
        assert store.client.ttl(store.key(fresh.id)) > CLAIM_TTL
    finally:
        jobs.shutdown()
