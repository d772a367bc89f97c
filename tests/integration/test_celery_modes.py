"""An adopted Celery project behaves in each mode without a queue as in plain Celery's eager
mode: the same results (``.get()``, chains included), the same tasks run, canvas included;
each difference that remains is listed in ``DIFFERENCES`` (and in docs/guides/adopting-celery.md).
With a result backend, BackgroundAsync stores states in it as a Celery worker does, readable
from another process; nothing is ever published to the project's broker."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

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
    redis_url,
    require_rabbitmq,
    require_service,
    sql_prefix,
)
from tests.integration import canvas_project
from tests.procs import BIN, ROOT, WorkerProcess, unified_jobs_worker, wait_until
from unified_jobs import Jobs

pytestmark = pytest.mark.timeout(180)

MODES = ["ForegroundBlocking", "BackgroundAsync"]

#: (mode, scenario) -> what that mode gives where it deliberately differs from eager mode.
DIFFERENCES: dict[tuple[str, str], Any] = {
    # Eager mode hands back the value of a task with ignore_result; BackgroundAsync keeps
    # nothing, as a Celery worker does: the state stays PENDING (the task ran all the same).
    ("BackgroundAsync", "ignore_result"): ("PENDING", [("quiet", "ran")]),
}


Outcomes = dict[str, tuple[Any, list[tuple[str, Any]]]]


def run_scenarios(app: Celery, settle: bool = False) -> Outcomes:
    """Each scenario's outcome and the calls it made (``settle``: tasks run in worker processes;
    give callbacks that run after ``.get()`` returned a moment to run too, and run the
    scenarios that need a worker process too)."""
    outcomes: Outcomes = {}
    scenarios = {**canvas_project.SCENARIOS, **(canvas_project.WORKER_SCENARIOS if settle else {})}
    for name, scenario in scenarios.items():
        canvas_project.clear_calls()
        outcome = scenario(app)
        if settle:
            time.sleep(0.5)
        outcomes[name] = (outcome, sorted(canvas_project.calls(), key=repr))
    return outcomes


@pytest.fixture(scope="module")
def eager() -> dict[str, tuple[Any, list[tuple[str, Any]]]]:
    app, _ = canvas_project.make_app("eager")
    return run_scenarios(app)


@pytest.fixture
def adopted(request: pytest.FixtureRequest) -> Iterator[tuple[Celery, Jobs]]:
    mode, broker, backend = request.param
    app, jobs = canvas_project.make_app(mode, broker=broker, backend=backend)
    assert jobs is not None
    yield app, jobs
    jobs.shutdown(wait=True, timeout=20)


def _calls_settle(expected: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The calls made, once callbacks that run after ``.get()`` returned have run too."""
    wait_until(lambda: sorted(map(repr, canvas_project.calls())) == sorted(map(repr, expected)), timeout=10)
    return canvas_project.calls()


@pytest.mark.parametrize("adopted", [(mode, None, None) for mode in MODES], indirect=True, ids=MODES)
def test_each_scenario_matches_celery_eager_mode(
    adopted: tuple[Celery, Jobs], eager: dict[str, tuple[Any, list[tuple[str, Any]]]]
) -> None:
    app, jobs = adopted
    for name, scenario in canvas_project.SCENARIOS.items():
        canvas_project.clear_calls()
        want, want_calls = DIFFERENCES.get((jobs.mode, name), eager[name])
        got = scenario(app)
        calls = _calls_settle(want_calls)
        assert got == want, f"{jobs.mode} {name}: {got!r}, eager mode gives {want!r}"
        assert sorted(map(repr, calls)) == sorted(map(repr, want_calls)), f"{jobs.mode} {name}: tasks run"


@pytest.fixture
def redis_broker_and_backend() -> tuple[str, str]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    flush_redis_db("canvas_broker")
    flush_redis_db("canvas_results")
    return redis_url("canvas_broker"), redis_url("canvas_results")


def _keys(url: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return list(client.keys("*"))
    finally:
        client.close()


@pytest.mark.parametrize("mode", MODES)
def test_with_a_result_backend_nothing_reaches_the_broker(
    redis_broker_and_backend: tuple[str, str], eager: dict[str, tuple[Any, list[tuple[str, Any]]]], mode: str
) -> None:
    broker, backend = redis_broker_and_backend
    app, jobs = canvas_project.make_app(mode, broker=broker, backend=backend)
    assert jobs is not None
    try:
        for name, scenario in canvas_project.SCENARIOS.items():
            canvas_project.clear_calls()
            want, want_calls = DIFFERENCES.get((mode, name), eager[name])
            assert scenario(app) == want, name
            _calls_settle(want_calls)
    finally:
        jobs.shutdown(wait=True, timeout=20)
    assert _keys(broker) == []  # no task message, no celery.chord_unlock: the mode has no queue
    assert any(key.startswith(b"celery-task-meta-") for key in _keys(backend))


READER = """
import json, sys, time
from celery import Celery
from celery.result import AsyncResult
app = Celery("reader", backend=sys.argv[1])
result = AsyncResult(sys.argv[2], app=app)
seen = []
print("reading", flush=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    state = result.state
    if not seen or seen[-1] != state:
        seen.append(state)
    if state == "SUCCESS":
        break
    time.sleep(0.02)
print(json.dumps({"states": seen, "value": result.get(timeout=5), "info": None}))
"""


def test_background_async_states_are_read_from_another_process(
    redis_broker_and_backend: tuple[str, str],
) -> None:
    _, backend = redis_broker_and_backend
    app, jobs = canvas_project.make_app("BackgroundAsync", backend=backend)
    assert jobs is not None
    try:
        # The reader starts first (a Python start can outlast the countdown on a loaded machine)
        # and reads the job's id from its argv: it says "reading" once it polls.
        task_id = str(uuid.uuid4())
        reader = subprocess.Popen(
            [str(BIN / "python"), "-c", READER, backend, task_id],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "reading", reader.stderr.read() if reader.stderr else ""
        result = app.tasks["canvas.progress"].apply_async((5,), countdown=1, task_id=task_id)
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, err
        seen = json.loads(out)
        # PENDING while it waits out its countdown, PROGRESS from update_state, then SUCCESS
        assert seen["states"] == ["PENDING", "PROGRESS", "SUCCESS"]
        assert seen["value"] == 5
        assert app.tasks["canvas.progress"].AsyncResult(result.id).info == 5
    finally:
        jobs.shutdown(wait=True, timeout=20)


def test_without_a_result_backend_results_are_kept_in_this_process() -> None:
    app, jobs = canvas_project.make_app("BackgroundAsync")
    assert jobs is not None
    try:
        result = app.tasks["canvas.progress"].delay(3)
        assert wait_until(lambda: result.state == "PROGRESS", timeout=10)
        assert result.info["of"] == 3
        assert result.get(timeout=20) == 3
        started = time.monotonic()
        late = app.tasks["canvas.add"].apply_async((1, 1), countdown=1)
        assert late.state == "PENDING"
        assert late.get(timeout=20) == 2
        assert time.monotonic() - started >= 0.9  # BackgroundAsync waits out a countdown
    finally:
        jobs.shutdown(wait=True, timeout=20)
    assert app.conf.result_backend is None  # shutdown gives the app back as it was


# -- the queue kinds, against plain Celery with a real worker ---------------------------------

#: scenario -> what the queue kinds give where they deliberately differ from plain Celery.
QUEUE_DIFFERENCES: dict[str, Any] = {
    # Plain Celery acks on receipt, so a task whose process dies is failed at once; unified_jobs
    # acks late, so it is delivered again, at most workers.max_deliveries (3) times, then failed
    # with unified_jobs.errors.WorkerLost ("delivered 3 times without finishing").
    "worker lost": (["WorkerLost", "FAILURE"], [("die", "started")] * 3),
}

FAST = ("--without-mingle", "--without-gossip")


def _with_worker(
    setup: dict[str, Any],
    worker_argv: list[str] | None,
    tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Outcomes:
    """Run the scenarios from this process against a real worker process on the same setup."""
    calls_file = tmp / "calls.jsonl"
    env = {"CANVAS_SETUP": json.dumps(setup), "CANVAS_CALLS": str(calls_file)}
    monkeypatch.setenv("CANVAS_CALLS", str(calls_file))
    app, jobs = canvas_project.make_app(
        setup["mode"], broker=setup.get("broker"), backend=setup.get("backend"), queue=setup.get("queue")
    )
    if worker_argv is None:
        worker = unified_jobs_worker(
            "tests.integration.canvas_worker_app:jobs", env, tmp / "worker.log", "-c", "2", "--", *FAST
        )
    else:
        worker = WorkerProcess(worker_argv, env, tmp / "worker.log")
    try:
        worker.wait_for_output("ready.", timeout=60)
        return run_scenarios(app, settle=True)
    finally:
        worker.stop()
        if jobs is not None:
            jobs.shutdown()


@pytest.fixture(scope="module")
def plain_worker(tmp_path_factory: pytest.TempPathFactory) -> Outcomes:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    flush_redis_db("canvas_broker")
    flush_redis_db("canvas_results")
    setup = {"mode": "plain", "broker": redis_url("canvas_broker"), "backend": redis_url("canvas_results")}
    argv = [
        str(BIN / "celery"),
        "-A",
        "tests.integration.canvas_worker_app",
        "worker",
        "-c",
        "2",
        "-l",
        "INFO",
        *FAST,
    ]
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _with_worker(setup, argv, tmp_path_factory.mktemp("plain"), monkeypatch)


def _queue_section(kind: str, tmp: Path) -> dict[str, Any]:
    if kind == "redis":
        flush_redis_db("canvas_broker")
        return {"kind": "Redis", "uri": redis_url("canvas_broker")}
    if kind == "postgres":
        require_service("PostgreSQL", PG_HOST, PG_PORT)
        prefix = sql_prefix("canvas")
        clear_sql_jobs(PG_URL, prefix)
        return {"kind": "Postgres", "uri": PG_URL, "table_prefix": prefix}
    if kind == "rabbitmq":
        require_rabbitmq()
        flush_redis_db("canvas_store")
        return {
            "kind": "RabbitMQ",
            "uri": make_rabbitmq_vhost("canvas"),
            "store_uri": redis_url("canvas_store"),
        }
    return {"kind": "Sqlite", "uri": f"sqlite:///{tmp / 'canvas.db'}"}


@pytest.mark.parametrize("kind", ["redis", "postgres", "sqlite", "rabbitmq"])
def test_each_scenario_on_a_queue_matches_plain_celery_with_a_worker(
    plain_worker: Outcomes, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flush_redis_db("canvas_results")
    setup = {
        "mode": "BackgroundQueue",
        "backend": redis_url("canvas_results"),
        "queue": _queue_section(kind, tmp_path),
    }
    try:
        ours = _with_worker(setup, None, tmp_path, monkeypatch)
    finally:
        if kind == "rabbitmq":
            drop_rabbitmq_vhost(setup["queue"]["uri"])
    # the baseline itself is what a Celery project expects of a worker
    assert plain_worker["chord"] == (
        12,
        sorted([("add", 0), ("add", 2), ("add", 4), ("add", 6), ("tsum", 12)], key=repr),
    )
    assert plain_worker["ignore_result"] == ("PENDING", [("quiet", "ran")])
    assert plain_worker["time_limit"] == (["TimeLimitExceeded", "FAILURE"], [("slow", "started")])
    assert plain_worker["worker lost"] == (["WorkerLostError", "FAILURE"], [("die", "started")])
    for name in plain_worker:
        want = QUEUE_DIFFERENCES.get(name, plain_worker[name])
        assert ours[name] == want, f"{kind} {name}: {ours[name]!r}, plain Celery {plain_worker[name]!r}"
