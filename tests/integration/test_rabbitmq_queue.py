"""BackgroundQueue on RabbitMQ with real worker processes (`unified-jobs start --worker`).

Every test runs in a private vhost of the real RabbitMQ (made and deleted with rabbitmqctl),
with the job store in its own Redis database.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from tests.conftest import (
    REDIS_HOST,
    REDIS_PORT,
    drop_rabbitmq_vhost,
    flush_redis_db,
    make_rabbitmq_vhost,
    purge_rabbitmq_queues,
    rabbitmq_counts,
    rabbitmq_ready,
    redis_url,
    require_rabbitmq,
    require_service,
)
from tests.contract.contract_app import Echo, Mail, Sleep, SlowRetry, create_app
from tests.integration.unrunnable_messages import assert_failed_with_body_and_reason, publish_unrunnable
from tests.procs import BIN, ROOT, WorkerPool, read_records, wait_until
from unified_jobs import Jobs
from unified_jobs.adapters.celery.kinds.rabbitmq import DELAY_PREFIX, DELAYED_ROW, LEVELS, level_name
from unified_jobs.errors import EnqueueError

pytestmark = pytest.mark.timeout(240)

APP = "tests.contract.contract_app:app_from_env"
FAST = ("--", "--without-mingle", "--without-gossip")
ONE_AT_A_TIME = ("--", "--prefetch-multiplier", "1", "--without-mingle", "--without-gossip")
QUEUES = ["default", "async", "mail"]
DELAY_QUEUES = [level_name(level) for level in range(LEVELS)]


def config(uri: str, **queue: Any) -> dict[str, Any]:
    return {
        "workers": {"mode": "BackgroundQueue"},
        "queue": {"kind": "RabbitMQ", "uri": uri, "store_uri": redis_url("rabbitmq"), **queue},
    }


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    require_rabbitmq()
    require_service("Redis", REDIS_HOST, REDIS_PORT)  # the job store
    uri = make_rabbitmq_vhost("rabbitmq")
    yield uri
    drop_rabbitmq_vhost(uri)


@pytest.fixture
def setup(vhost: str, tmp_path: Path) -> tuple[str, Path, dict[str, str]]:
    flush_redis_db("rabbitmq")
    purge_rabbitmq_queues(vhost, QUEUES)
    record = tmp_path / "record.jsonl"
    record.touch()
    return vhost, record, {"UJ_CONTRACT_RECORD": str(record), "UJ_CONTRACT_CONFIG": json.dumps(config(vhost))}


App = tuple[str, Path, dict[str, str], Jobs]


@pytest.fixture
def app(setup: tuple[str, Path, dict[str, str]]) -> Iterator[App]:
    """``setup`` and the contract app on it (as the producer), shut down after the test."""
    uri, record, env = setup
    jobs = create_app(config(uri), str(record))
    yield uri, record, env, jobs
    jobs.shutdown()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerPool]:
    pool = WorkerPool(APP, tmp_path)
    yield pool
    pool.stop_all()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``unified-jobs --app <the contract app> ARGS``, as a user runs it."""
    return subprocess.run(
        [str(BIN / "unified-jobs"), "--app", APP, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def unacked(uri: str) -> int:
    return sum(n for _, n in rabbitmq_counts(uri).values())


def test_higher_priority_runs_first(app: App, workers: Any) -> None:
    _uri, record, env, _jobs = app
    for n, priority in [(1, None), (2, 9), (3, 5), (4, 0), (5, 9)]:
        Echo.perform_later({"n": n}, priority=priority)
    worker = workers(env, "--concurrency", "1", *ONE_AT_A_TIME)
    assert wait_until(lambda: len(read_records(record)) >= 5, timeout=30), worker.output()[-2000:]
    assert [r["args"]["n"] for r in read_records(record)] == [2, 5, 3, 1, 4]  # no priority = 0


def test_a_job_due_in_an_hour_waits_in_the_broker_and_a_short_delay_runs_on_time(
    app: App, workers: Any
) -> None:
    uri, record, env, jobs = app
    worker = workers(env, "--concurrency", "2", *FAST)
    worker.wait_for_output("ready.")
    hour = Echo.perform_later({"n": 1}, wait=timedelta(hours=1))
    # 8 s: room for two rabbitmqctl starts (seconds each on a loaded machine) before it is due
    soon = Echo.perform_later({"n": 2}, wait=timedelta(seconds=8))
    assert soon.run_at is not None
    time.sleep(1.0)
    # Both wait in the delay queues; no worker holds either (RabbitMQ counts them unacked).
    waiting = rabbitmq_ready(uri, DELAY_QUEUES)
    assert sum(waiting.values()) == 2, waiting
    counts = rabbitmq_counts(uri)
    assert counts["default"] == (0, 0) and sum(n for _, n in counts.values()) == 0, counts
    assert wait_until(lambda: len(read_records(record)) >= 1, timeout=30), worker.output()[-2000:]
    (ran,) = read_records(record)
    due = soon.run_at.timestamp()
    assert ran["job"] == soon.id
    assert due - 0.05 <= ran["at"] < due + 2.0, f"ran {ran['at'] - due:+.2f} s from its time"
    time.sleep(1.0)
    counts = rabbitmq_counts(uri)
    assert unacked(uri) == 0, f"a worker holds the hour-long job: {counts}"
    assert sum(ready for name, (ready, _) in counts.items() if name.startswith(DELAY_PREFIX)) == 1
    assert jobs.status(hour) == "scheduled"
    assert [r["job"] for r in read_records(record)] == [soon.id]


def test_a_delayed_job_retried_with_a_backoff_waits_in_the_broker_again(app: App, workers: Any) -> None:
    _uri, record, env, jobs = app
    worker = workers(env, "--concurrency", "1", *FAST)
    worker.wait_for_output("ready.")
    handle = SlowRetry.perform_later({"fail_times": 1}, wait=timedelta(seconds=4))  # retry: 3 s later
    assert handle.run_at is not None
    assert wait_until(lambda: jobs.status(handle) == "completed", timeout=40), worker.output()[-2000:]
    first, second = (r["at"] for r in read_records(record))
    assert first >= handle.run_at.timestamp() - 0.05
    assert second - first >= 3.0 - 0.05
    info = jobs.job(handle)
    assert info is not None and info.attempts == 2


def test_sigkilled_worker_loses_no_job(app: App, workers: Any) -> None:
    uri, record, env, jobs = app
    ids = [Sleep.perform_later({"n": i, "seconds": 2}).id for i in range(20)]
    first = workers(env, "--concurrency", "2", *ONE_AT_A_TIME)

    def ended() -> set[str]:
        return {r["job"] for r in read_records(record) if r["worker"] == "sleep_end"}

    assert wait_until(lambda: len(ended()) >= 4, timeout=60), first.output()[-2000:]
    first.kill()  # SIGKILL to the whole process group: the main process and its pool
    assert len(ended()) < 20, "the kill must happen mid-way"
    # RabbitMQ put the killed worker's unacked jobs back at once (its connection closed).
    assert wait_until(lambda: unacked(uri) == 0, timeout=10)
    second = workers(env, "--concurrency", "4", *FAST, name="second")
    assert wait_until(lambda: ended() >= set(ids), timeout=120), second.output()[-3000:]
    assert {jobs.status(i) for i in ids} == {"completed"}


def test_jobs_list_counts_messages_and_purge_empties_the_queues(app: App, workers: Any) -> None:
    _uri, record, env, jobs = app
    for n in range(3):
        Echo.perform_later({"n": n})
    Mail.perform_later({"n": 9})
    Echo.perform_later({"n": 99}, wait=timedelta(hours=1))

    def counts() -> dict[str, Any]:
        out = cli(env, "jobs", "list", "--format", "json")
        assert out.returncode == 0, out.stderr
        data: dict[str, Any] = json.loads(out.stdout)
        assert data["kind"] == "RabbitMQ"
        return data["counts"]

    assert counts() == {
        "default": {"queued": 3, "reserved": 0},
        "async": {"queued": 0, "reserved": 0},
        "mail": {"queued": 1, "reserved": 0},
        DELAYED_ROW: {"queued": 1, "reserved": 0},
    }
    table = cli(env, "jobs", "list").stdout
    assert "Queues in the RabbitMQ queue at amqp://guest:***@127.0.0.1:5672/" in table
    row = next(line for line in table.splitlines() if "default" in line)
    assert [c.strip() for c in row.strip("│ ").split("│")] == ["default", "3", "0"]

    refused = cli(env, "jobs", "purge")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "deletes queued jobs only, all of them: run `jobs purge --status queued --max-age 0`" in (
        refused.stderr
    )
    purged = cli(env, "jobs", "purge", "--status", "queued", "--max-age", "0")
    assert purged.returncode == 0, purged.stderr
    assert "deleted 4 jobs (queued)" in purged.stdout
    assert "(default: 3, async: 0, mail: 1)" in purged.stdout
    after = counts()
    assert after["default"] == after["mail"] == {"queued": 0, "reserved": 0}
    assert after[DELAYED_ROW] == {"queued": 1, "reserved": 0}, "the delay queues are the vhost's, not purged"

    # A job a worker runs (acks late) is reserved, not queued.
    worker = workers(env, "--concurrency", "1", *FAST)
    long = Sleep.perform_later({"n": 1, "seconds": 8})
    started = lambda: any(r["worker"] == "sleep_start" for r in read_records(record))  # noqa: E731
    assert wait_until(started, timeout=30), worker.output()[-2000:]
    assert counts()["default"] == {"queued": 0, "reserved": 1}
    assert wait_until(lambda: jobs.status(long) == "completed", timeout=30)


def test_messages_a_worker_cannot_run_are_failed_jobs_with_their_body_and_reason(
    app: App, workers: Any
) -> None:
    _, record, env, jobs = app
    worker = workers(env, "--concurrency", "1", *FAST)
    worker.wait_for_output("ready.")
    publish_unrunnable(jobs)
    assert_failed_with_body_and_reason(jobs, record, worker)
    assert wait_until(lambda: unacked(app[0]) == 0, 10), rabbitmq_counts(app[0])  # every one acked


def test_doctor_passes_and_fails_with_the_reason(setup: tuple[str, Path, dict[str, str]]) -> None:
    uri, _record, env = setup
    ok = cli(env, "doctor", "--fix")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    vhost = uri.rsplit("/", 1)[1]
    assert re.search(rf"ok +queue: +RabbitMQ at amqp://\S+/{vhost} \(RabbitMQ \d+\.\d+", ok.stdout), ok.stdout
    assert "delay queues" in ok.stdout and "answered PING" in ok.stdout
    nobody = "amqp://guest:hunter2@127.0.0.1:5699/"
    env = {**env, "UJ_CONTRACT_CONFIG": json.dumps(config(nobody))}
    down = cli(env, "doctor", "--timeout", "2")
    assert down.returncode == 1, down.stdout
    assert "RabbitMQ at amqp://guest:***@127.0.0.1:5699/ did not answer" in down.stdout
    assert "hunter2" not in down.stdout + down.stderr


def test_rabbitmq_down_at_enqueue_is_a_clear_error_with_the_password_masked(tmp_path: Path) -> None:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    jobs = create_app(config("amqp://guest:hunter2@127.0.0.1:5699/"), str(tmp_path / "r.jsonl"))
    started = time.monotonic()
    with pytest.raises(EnqueueError) as info:
        Echo.perform_later({"n": 1})
    message = str(info.value)
    assert "amqp://guest:***@127.0.0.1:5699/" in message and "hunter2" not in message
    assert "Nothing was enqueued" in message
    assert time.monotonic() - started < 15, "the retry must be short and bounded"
    jobs.shutdown()


def test_dangerously_flush_empties_only_this_apps_queues(app: App, workers: Any) -> None:
    uri, record, env, _jobs = app
    for i in range(5):
        Echo.perform_later({"n": i})
    with Connection(uri) as conn:  # another app's queue in the same vhost
        conn.SimpleQueue("another-apps-queue").put({"keep": "me"})
    env["UJ_CONTRACT_CONFIG"] = json.dumps(config(uri, dangerously_flush=True))
    worker = workers(env, "--concurrency", "1", *FAST)
    worker.wait_for_output("ready.")
    worker.wait_for_output("dangerously_flush: deleted 5 queued job(s)")
    Echo.perform_later({"n": 100})
    assert wait_until(lambda: len(read_records(record)) >= 1, timeout=30)
    time.sleep(0.3)
    assert [r["args"]["n"] for r in read_records(record)] == [100]
    assert rabbitmq_counts(uri)["another-apps-queue"] == (1, 0)


def test_a_delayed_batch_is_one_transaction_and_runs_when_due(app: App, workers: Any) -> None:
    uri, record, env, _jobs = app
    worker = workers(env, "--concurrency", "2", *FAST)
    worker.wait_for_output("ready.")
    handles = Echo.perform_all_later([{"n": n} for n in range(20)], wait=timedelta(seconds=5))
    waiting = rabbitmq_ready(uri, DELAY_QUEUES)
    assert sum(waiting.values()) == 20, f"the whole batch waits in the delay queues: {waiting}"
    assert wait_until(lambda: len(read_records(record)) >= 20, timeout=30), worker.output()[-2000:]
    due = min(h.run_at.timestamp() for h in handles if h.run_at is not None)
    assert min(r["at"] for r in read_records(record)) >= due - 0.05
    assert sorted(r["args"]["n"] for r in read_records(record)) == list(range(20))
