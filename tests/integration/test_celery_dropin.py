"""Adopting an existing Celery app: its tasks keep working and follow the configured mode."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from celery.result import EagerResult
from kombu.exceptions import EncodeError
from pydantic import BaseModel

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
from tests.procs import BIN, WorkerProcess, read_records, unified_jobs_worker, wait_until

pytestmark = [
    pytest.mark.timeout(120),
    # Each test re-imports the legacy module, so Celery's process-wide shared-task registry sees its
    # tasks again; a real project imports it once.
    pytest.mark.filterwarnings("ignore:Task name .* is already registered"),
]

QUEUE_CONFIG = {
    "workers": {"mode": "BackgroundQueue"},
    "queue": {"kind": "Redis", "uri": redis_url("dropin")},
}


def load_legacy(monkeypatch: pytest.MonkeyPatch, record: Path, config: dict[str, Any]) -> ModuleType:
    monkeypatch.setenv("UJ_LEGACY_CONFIG", json.dumps(config))
    monkeypatch.setenv("UJ_LEGACY_RECORD", str(record))
    sys.modules.pop("tests.integration.legacy_celery_app", None)
    return importlib.import_module("tests.integration.legacy_celery_app")


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "legacy.jsonl"


def test_foreground_blocking_runs_celery_tasks_inline_with_json_and_errors(
    monkeypatch: pytest.MonkeyPatch, record: Path
) -> None:
    legacy = load_legacy(monkeypatch, record, {"workers": {"mode": "ForegroundBlocking"}})
    result = legacy.add.delay(2, 3)
    assert isinstance(result, EagerResult) and result.get() == 5
    assert read_records(record)[0]["x"] == 2
    assert legacy.add.apply_async((1,), {"y": 1}, task_id="fixed-id").id == "fixed-id"
    assert legacy.whoami.delay().get() == read_records(record)[-1]["id"]
    with pytest.raises(ValueError, match="on purpose"):  # propagates, unlike task_always_eager
        legacy.boom.delay("on purpose")
    with pytest.raises(EncodeError, match="not JSON serializable"):  # what a real broker would refuse
        legacy.add.delay(object(), 1)
    legacy.Greet.perform_later({"name": "ada"})
    assert read_records(record)[-1] == {"task": "greet", "name": "ada", "pid": os.getpid()}


@pytest.mark.parametrize("mode", ["ForegroundBlocking", "BackgroundAsync"])
def test_chains_callbacks_custom_bases_and_naive_etas_follow_the_mode(
    monkeypatch: pytest.MonkeyPatch, record: Path, mode: str
) -> None:
    from celery import chain

    legacy = load_legacy(monkeypatch, record, {"workers": {"mode": mode}})
    chain(legacy.add.s(1, 2), legacy.notify.s(label="chained")).delay()
    legacy.add.apply_async((5, 5), link=legacy.notify.s(label="linked"))
    if mode == "BackgroundAsync":
        legacy.boom.apply_async(("kaput",), link_error=legacy.on_error.s())
    legacy.with_base.delay(7)
    legacy.add.apply_async((10, 10), eta=datetime.utcnow() + timedelta(seconds=0.3))  # naive: UTC
    if mode == "ForegroundBlocking":
        with pytest.raises(ValueError, match="kaput"):
            legacy.boom.apply_async(("kaput",), link_error=legacy.on_error.s())
    legacy.jobs.shutdown(wait=True, timeout=10)
    got = read_records(record)
    assert {"task": "notify", "result": 3, "label": "chained"} in got
    assert {"task": "notify", "result": 10, "label": "linked"} in got
    assert {"task": "on_error", "error": "kaput"} in got
    assert {"task": "with_base", "x": 7} in got
    assert any(r.get("task") == "add" and r.get("x") == 10 for r in got)


def test_background_async_runs_celery_tasks_in_the_pool(
    monkeypatch: pytest.MonkeyPatch, record: Path
) -> None:
    legacy = load_legacy(monkeypatch, record, {"workers": {"mode": "BackgroundAsync"}})
    ids = {legacy.add.delay(i, i).id for i in range(20)}
    legacy.jobs.shutdown(wait=True, timeout=10)
    assert len(ids) == 20
    assert sorted(r["x"] for r in read_records(record)) == list(range(20))


def test_background_async_waits_out_an_adopted_tasks_own_retry_delays(
    monkeypatch: pytest.MonkeyPatch, record: Path
) -> None:
    legacy = load_legacy(monkeypatch, record, {"workers": {"mode": "BackgroundAsync"}})
    ok = legacy.flaky.delay(succeed_on=3)  # autoretry_for + retry_backoff=1: waits 1 s, then 2 s
    gave_up = legacy.countdown.delay()  # self.retry(countdown=0.5), max_retries=1
    assert wait_until(lambda: legacy.jobs.status(ok.id) == "completed", timeout=15)
    assert wait_until(lambda: legacy.jobs.status(gave_up.id) == "failed", timeout=15)
    runs = [r for r in read_records(record) if r["task"] == "flaky"]
    assert [r["retries"] for r in runs] == [0, 1, 2]  # Celery's request.retries, as on a worker
    assert runs[1]["at"] - runs[0]["at"] >= 1.0
    assert runs[2]["at"] - runs[1]["at"] >= 2.0
    tries = [r for r in read_records(record) if r["task"] == "countdown"]
    assert [r["retries"] for r in tries] == [0, 1]
    assert tries[1]["at"] - tries[0]["at"] >= 0.5
    failed = legacy.jobs.job(gave_up.id)
    assert failed is not None and failed.attempts == 2 and failed.last_error == "LookupError: still missing"
    assert [info.id for info in legacy.jobs.failed("legacy.countdown")] == [gave_up.id]
    legacy.jobs.shutdown(wait=True, timeout=10)


def test_foreground_blocking_retries_an_adopted_task_at_once_like_celery_eager(
    monkeypatch: pytest.MonkeyPatch, record: Path
) -> None:
    legacy = load_legacy(monkeypatch, record, {"workers": {"mode": "ForegroundBlocking"}})
    started = time.monotonic()
    assert legacy.flaky.delay(succeed_on=3).get() == 2
    assert time.monotonic() - started < 1.0  # no sleeping in tests
    with pytest.raises(ConnectionError, match="down on try 3"):  # max_retries=2: the 3rd error is raised
        legacy.flaky.delay(succeed_on=4)
    assert [r["retries"] for r in read_records(record)] == [0, 1, 2, 0, 1, 2]


def test_adopting_changes_only_the_adopted_app_and_shutdown_gives_it_back(
    monkeypatch: pytest.MonkeyPatch, record: Path
) -> None:
    from celery import Celery
    from celery.app.task import Task

    other = Celery("bystander", broker="memory://")
    legacy = load_legacy(monkeypatch, record, {"workers": {"mode": "BackgroundAsync"}})
    assert "send_task" in vars(legacy.app)  # an instance attribute of the adopted app only
    assert "send_task" not in vars(other)
    assert Task.apply_async.__module__ == "celery.app.task"  # no class is patched
    legacy.jobs.shutdown(wait=True, timeout=10)
    assert "send_task" not in vars(legacy.app)  # plain Celery again


def test_existing_settings_are_kept_and_safety_settings_added(
    monkeypatch: pytest.MonkeyPatch, record: Path
) -> None:
    legacy = load_legacy(monkeypatch, record, QUEUE_CONFIG)
    conf = legacy.app.conf
    assert legacy.jobs.celery is legacy.app
    assert conf.task_time_limit == 30
    assert conf.task_default_queue == "legacy-default"
    assert conf.broker_url == redis_url("dropin")
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    router = legacy.app.amqp.router
    assert router.route({}, "legacy.add")["queue"].name == "math"
    # A Worker without a queue of its own goes to the adopted app's default queue.
    assert router.route({}, "legacy.Greet")["queue"].name == "legacy-default"
    assert legacy.Greet.queue == "legacy-default"
    assert legacy.Greet.perform_later({"name": "x"}).queue == "legacy-default"
    assert router.route({}, "legacy.Report")["queue"].name == "reports"
    assert set(legacy.jobs.celery_bridge().worker_queues()) == {"legacy-default", "math", "reports"}
    # every Worker queue is declared on the app, so a stock `celery worker` consumes it
    assert {"legacy-default", "reports"} <= set(legacy.app.amqp.queues)


def test_an_adopted_app_can_keep_its_own_delivery_settings() -> None:
    from celery import Celery

    from unified_jobs import Config, Jobs, Worker

    app = Celery("keeper")
    app.conf.task_acks_late = False
    app.conf.task_publish_retry = False

    @app.task(name="keeper.plain")
    def plain() -> None: ...

    class Args(BaseModel):
        n: int

    class Keep(Worker[Args]):
        name = "keeper.Keep"

        def perform(self, args: Args) -> None: ...

    config = {"workers": {"mode": "BackgroundQueue", "keep_celery_settings": ["task_acks_late"]}}
    config["queue"] = QUEUE_CONFIG["queue"]
    jobs = Jobs(Config.from_dict(config), celery_app=app)
    try:
        jobs.register(Keep)
        assert app.conf.task_acks_late is False  # kept, as the app had it
        assert app.conf.task_publish_retry is True  # not kept: set by unified_jobs
        assert app.tasks["keeper.plain"].acks_late is False
        worker_task = app.tasks["keeper.Keep"]  # a Worker keeps safe delivery whatever the app says
        assert worker_task.acks_late is True and worker_task.reject_on_worker_lost is True
    finally:
        jobs.shutdown()


def test_the_sql_kinds_tune_worker_lost_wait_unless_the_app_set_its_own(tmp_path: Path) -> None:
    from celery import Celery

    from unified_jobs import Config, Jobs

    config = Config.from_dict(
        {
            "workers": {"mode": "BackgroundQueue"},
            "queue": {"kind": "Sqlite", "uri": f"sqlite:///{tmp_path / 'tune.db'}"},
        }
    )
    default, own = Celery("tuned"), Celery("own")
    own.conf.worker_lost_wait = 5.0
    for app in (default, own):
        Jobs(config, celery_app=app).shutdown()
    assert default.conf.worker_lost_wait == 1.0  # a dead pool process is noticed in ~1 s, not 10
    assert own.conf.worker_lost_wait == 5.0


def test_keeping_celery_settings_is_checked() -> None:
    from celery import Celery

    from unified_jobs import Config, Jobs
    from unified_jobs.errors import ConfigError

    with pytest.raises(
        ConfigError, match="cannot keep task_serializer: the settings an adopted app can keep"
    ):
        Config.from_dict({"workers": {"keep_celery_settings": ["task_serializer"]}})
    keep_acks = Config.from_dict(
        {"workers": {"mode": "ForegroundBlocking", "keep_celery_settings": ["task_acks_late"]}}
    )
    with pytest.raises(
        ConfigError, match="keeps an adopted Celery app's own settings, and this Jobs adopted none"
    ):
        Jobs(keep_acks).celery_bridge()
    app = Celery("pickler")
    app.conf.accept_content = ["pickle"]
    keep_content = Config.from_dict(
        {"workers": {"mode": "ForegroundBlocking", "keep_celery_settings": ["accept_content"]}}
    )
    with pytest.raises(ConfigError, match=r"keeps accept_content \['pickle'\], which lacks json"):
        Jobs(keep_content, celery_app=app)


@pytest.fixture
def queue_env(record: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    flush_redis_db("dropin")
    yield {"UJ_LEGACY_CONFIG": json.dumps(QUEUE_CONFIG), "UJ_LEGACY_RECORD": str(record)}


def _kind_config(kind: str, tmp_path: Path) -> dict[str, Any]:
    if kind == "redis":
        require_service("Redis", REDIS_HOST, REDIS_PORT)
        flush_redis_db("dropin")
        return QUEUE_CONFIG
    if kind == "postgres":
        require_service("PostgreSQL", PG_HOST, PG_PORT)
        prefix = sql_prefix("dropin")
        clear_sql_jobs(PG_URL, prefix)
        return {
            "workers": {"mode": "BackgroundQueue"},
            "queue": {"kind": "Postgres", "uri": PG_URL, "table_prefix": prefix},
        }
    if kind == "rabbitmq":
        require_rabbitmq()
        flush_redis_db("dropin")  # its job store
        uri = make_rabbitmq_vhost("dropin")
        return {
            "workers": {"mode": "BackgroundQueue"},
            "queue": {"kind": "RabbitMQ", "uri": uri, "store_uri": redis_url("dropin")},
        }
    return {
        "workers": {"mode": "BackgroundQueue"},
        "queue": {"kind": "Sqlite", "uri": f"sqlite:///{tmp_path / 'dropin.db'}"},
    }


@pytest.fixture
def kind_config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    config = _kind_config(request.param, tmp_path)
    yield config
    if request.param == "rabbitmq":
        drop_rabbitmq_vhost(config["queue"]["uri"])


KINDS = ["redis", "postgres", "sqlite", "rabbitmq"]


@pytest.mark.parametrize("kind_config", KINDS, indirect=True, ids=KINDS)
def test_a_stock_celery_worker_runs_jobs_from_perform_later(
    monkeypatch: pytest.MonkeyPatch, record: Path, tmp_path: Path, kind_config: dict[str, Any]
) -> None:
    config = kind_config
    kind = config["queue"]["kind"]
    legacy = load_legacy(monkeypatch, record, config)
    env = {"UJ_LEGACY_CONFIG": json.dumps(config), "UJ_LEGACY_RECORD": str(record)}
    worker = WorkerProcess(
        [
            str(BIN / "celery"),
            "-A",
            "tests.integration.legacy_celery_app",
            "worker",  # no -Q: it consumes the app's default queue and every Worker's queue
            "-c",
            "2",
            "--without-mingle",
            "--without-gossip",
        ],
        env,
        tmp_path / "celery.log",
    )
    try:
        legacy.Greet.perform_later({"name": "grace"})  # the app's default queue, legacy-default
        legacy.Report.perform_later({"name": "ada"})  # its own queue, reports
        legacy.with_base.delay(7)  # a plain task, on the app's default queue
        assert wait_until(lambda: len(read_records(record)) >= 3, timeout=30), worker.output()[-3000:]
        assert {r["task"] for r in read_records(record)} == {"greet", "report", "with_base"}
        if kind in ("Redis", "RabbitMQ"):  # remote control needs fanout, which the SQL kinds lack
            out = subprocess.run(
                [str(BIN / "celery"), "-A", "tests.integration.legacy_celery_app", "inspect", "registered"],
                env={**os.environ, **env, "PYTHONPATH": str(Path(__file__).parents[2])},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert "legacy.Greet" in out.stdout and "legacy.Report" in out.stdout, out.stdout + out.stderr
    finally:
        worker.stop()
    banner = worker.output()
    assert "legacy-default" in banner and "reports" in banner


def test_unified_jobs_worker_runs_the_old_tasks(
    monkeypatch: pytest.MonkeyPatch, record: Path, queue_env: dict[str, str], tmp_path: Path
) -> None:
    legacy = load_legacy(monkeypatch, record, QUEUE_CONFIG)
    worker = unified_jobs_worker(
        "tests.integration.legacy_celery_app:jobs",
        queue_env,
        tmp_path / "uj.log",
        "--concurrency",
        "2",
        "--",
        "--without-mingle",
        "--without-gossip",
    )
    try:
        legacy.add.delay(1, 1)  # routed to "math" by the app's own task_routes
        legacy.add.apply_async((2, 2), countdown=0.2)
        legacy.Greet.perform_later({"name": "linus"})
        assert wait_until(lambda: len(read_records(record)) >= 3, timeout=30), worker.output()[-3000:]
        assert sorted(r.get("x", -1) for r in read_records(record)) == [-1, 1, 2]
    finally:
        worker.stop()
    assert "legacy.add" in worker.output() and "math" in worker.output()


def test_celery_cli_inspect_sees_a_unified_jobs_worker(
    monkeypatch: pytest.MonkeyPatch, record: Path, queue_env: dict[str, str], tmp_path: Path
) -> None:
    worker = unified_jobs_worker(
        "tests.integration.legacy_celery_app:jobs",
        queue_env,
        tmp_path / "uj.log",
        "--concurrency",
        "1",
        "--hostname",
        "uj-inspect@%h",
    )
    try:
        worker.wait_for_output("ready.")
        out = subprocess.run(
            [
                str(BIN / "celery"),
                "-A",
                "tests.integration.legacy_celery_app",
                "inspect",
                "registered",
                "--timeout",
                "5",
            ],
            env={**os.environ, **queue_env, "PYTHONPATH": str(Path(__file__).parents[2])},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "uj-inspect@" in out.stdout, out.stdout + out.stderr
        assert "legacy.Greet" in out.stdout and "legacy.add" in out.stdout
    finally:
        worker.stop()


def _beat(env: dict[str, str], tmp_path: Path, seconds: float) -> subprocess.CompletedProcess[str]:
    """``celery -A legacy beat`` for up to ``seconds`` (then SIGTERM)."""
    argv = [str(BIN / "celery"), "-A", "tests.integration.legacy_celery_app", "beat", "--loglevel", "INFO"]
    argv += ["--schedule", str(tmp_path / "beat-schedule"), "--pidfile", ""]
    proc = subprocess.Popen(
        argv,
        env={**os.environ, **env, "PYTHONPATH": str(Path(__file__).parents[2])},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


@pytest.mark.parametrize("mode", ["BackgroundAsync", "ForegroundBlocking"])
def test_celery_beat_in_a_mode_without_a_queue_says_so_and_runs_nothing(
    record: Path, tmp_path: Path, mode: str
) -> None:
    env = {"UJ_LEGACY_CONFIG": json.dumps({"workers": {"mode": mode}}), "UJ_LEGACY_RECORD": str(record)}
    result = _beat(env, tmp_path, seconds=30)
    assert result.returncode == 78, result.stdout
    assert f"workers.mode is {mode}, which has no queue" in result.stdout
    assert "would run inside this beat process" in result.stdout
    assert read_records(record) == []  # the periodic task never ran in the beat process


def test_celery_beat_with_a_queue_publishes_the_periodic_tasks(
    record: Path, queue_env: dict[str, str], tmp_path: Path
) -> None:
    import redis

    result = _beat(queue_env, tmp_path, seconds=4)
    assert "has no queue" not in result.stdout, result.stdout
    assert "Sending due task add-every-second (legacy.add)" in result.stdout, result.stdout
    assert read_records(record) == []  # published for the workers, not run here
    client = redis.Redis.from_url(redis_url("dropin"))
    assert client.llen("math") >= 1  # legacy.add is routed to "math" by the app's task_routes
