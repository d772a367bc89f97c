"""Prometheus metrics of an app's jobs (``unified_jobs.observability.metrics``), in the
in-process modes: the counters and the histogram move for success, failure and retry; the
queue gauges come from the job store at scrape time and survive a store that cannot answer.

Each test counts in a registry of its own (``enable_metrics(jobs, registry)``), so tests
never see each other's counts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from unified_jobs import Config, Jobs, Retry, Worker
from unified_jobs.core.executor import JobObserver
from unified_jobs.core.job import Job, utcnow
from unified_jobs.core.monitor import QueueStats
from unified_jobs.core.outcome import Outcome
from unified_jobs.errors import MissingDependencyError
from unified_jobs.observability import enable_metrics, metrics_app, render_metrics
from unified_jobs.observability.metrics import MetricsObserver
from unified_jobs.observability.multiprocess import ProcessFiles

MODES = ["ForegroundBlocking", "BackgroundAsync"]


class Args(BaseModel):
    n: int = 0


class Ok(Worker[Args]):
    name = "metrics.Ok"

    def perform(self, args: Args) -> None:
        time.sleep(0.002)  # long enough for the histogram's sum to be clearly above zero


class AsyncOk(Worker[Args]):
    name = "metrics.AsyncOk"
    queue = "async"

    async def perform(self, args: Args) -> None:
        await asyncio.sleep(0)


class Fails(Worker[Args]):
    name = "metrics.Fails"

    def perform(self, args: Args) -> None:
        raise RuntimeError("fails on purpose")


class FailsOnce(Worker[Args]):
    """Fails its first attempt (retried at once in ForegroundBlocking, after 10 ms else)."""

    name = "metrics.FailsOnce"
    retry = Retry(max_attempts=2, wait=0.01, jitter=False)

    def perform(self, args: Args) -> None:
        if self.attempt == 1:
            raise ConnectionError("the first attempt fails on purpose")


class Unique(Worker[Args]):
    name = "metrics.Unique"
    unique_for = timedelta(minutes=1)

    def perform(self, args: Args) -> None:
        time.sleep(0.2)


WORKERS = (Ok, AsyncOk, Fails, FailsOnce, Unique)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(params=MODES)
def jobs(request: pytest.FixtureRequest, registry: CollectorRegistry) -> Iterator[Jobs]:
    app = Jobs(Config.from_dict({"workers": {"mode": request.param, "concurrency": 2}}))
    for worker in WORKERS:
        app.register(worker)
    enable_metrics(app, registry)
    yield app
    app.shutdown()


def value(
    registry: CollectorRegistry, name: str, worker: str, queue: str = "default", **labels: str
) -> float:
    found = registry.get_sample_value(name, {"worker": worker, "queue": queue, **labels})
    return 0.0 if found is None else found


def settle(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the counters did not reach the expected values"
        time.sleep(0.005)


def test_metrics_are_off_until_enabled() -> None:
    app = Jobs(Config.from_dict({"workers": {"mode": "ForegroundBlocking"}}))
    assert not any(isinstance(o, MetricsObserver) for o in app.executor.observers)
    registry = CollectorRegistry()
    observer = enable_metrics(app, registry)
    assert enable_metrics(app, registry) is observer  # enabling again changes nothing
    assert [o for o in app.executor.observers if isinstance(o, MetricsObserver)] == [observer]


def test_success_failure_and_retry_move_the_counters_and_the_histogram(
    jobs: Jobs, registry: CollectorRegistry
) -> None:
    inline = jobs.mode == "ForegroundBlocking"
    jobs.perform_later(Ok, {"n": 1})
    jobs.perform_later(Ok, {"n": 2})
    if inline:  # the job's own error reaches the caller
        with pytest.raises(RuntimeError, match="fails on purpose"):
            jobs.perform_later(Fails, {})
    else:
        jobs.perform_later(Fails, {})
    jobs.perform_later(FailsOnce, {})

    c = "unified_jobs_jobs_{}_total".format
    settle(lambda: value(registry, c("succeeded"), "metrics.FailsOnce") == 1)
    settle(lambda: value(registry, c("failed"), "metrics.Fails") == 1)
    settle(lambda: value(registry, c("succeeded"), "metrics.Ok") == 2)

    assert value(registry, c("enqueued"), "metrics.Ok") == 2
    assert value(registry, c("enqueued"), "metrics.Fails") == 1  # it was enqueued (and ran)
    assert value(registry, c("enqueued"), "metrics.FailsOnce") == 1  # a retry is no new enqueue
    assert value(registry, c("started"), "metrics.Ok") == 2
    assert value(registry, c("started"), "metrics.Fails") == 1
    assert value(registry, c("started"), "metrics.FailsOnce") == 2
    assert value(registry, c("retried"), "metrics.FailsOnce") == 1
    assert value(registry, c("failed"), "metrics.FailsOnce") == 0
    assert value(registry, c("succeeded"), "metrics.Fails") == 0
    assert value(registry, c("retried"), "metrics.Ok") == 0

    hist = "unified_jobs_job_duration_seconds_count"
    assert value(registry, hist, "metrics.Ok", outcome="succeeded") == 2
    assert value(registry, hist, "metrics.Fails", outcome="failed") == 1
    assert value(registry, hist, "metrics.FailsOnce", outcome="retried") == 1
    assert value(registry, hist, "metrics.FailsOnce", outcome="succeeded") == 1
    assert (
        value(registry, "unified_jobs_job_duration_seconds_sum", "metrics.Ok", outcome="succeeded") >= 0.004
    )
    # Two 2 ms jobs: their time is measured (at least the 2 ms each), and they land in a low
    # bucket and every one above it. Not asserted: the 5 ms bucket, which a loaded machine (the
    # suite runs in parallel) can miss.
    total = value(registry, "unified_jobs_job_duration_seconds_sum", "metrics.Ok", outcome="succeeded")
    assert 0.004 <= total < 0.5, total
    for le in ("0.25", "10.0", "+Inf"):
        bucket = value(
            registry, "unified_jobs_job_duration_seconds_bucket", "metrics.Ok", outcome="succeeded", le=le
        )
        assert bucket == 2, (le, bucket)


def test_async_perform_batches_and_aperform_later_are_counted(
    jobs: Jobs, registry: CollectorRegistry
) -> None:
    jobs.perform_all_later(AsyncOk, [{"n": n} for n in range(3)])
    asyncio.run(jobs.aperform_later(AsyncOk, {"n": 9}))
    name = "metrics.AsyncOk"
    settle(lambda: value(registry, "unified_jobs_jobs_succeeded_total", name, "async") == 4)
    assert value(registry, "unified_jobs_jobs_enqueued_total", name, "async") == 4
    assert value(registry, "unified_jobs_jobs_started_total", name, "async") == 4
    assert value(registry, "unified_jobs_job_duration_seconds_count", name, "async", outcome="succeeded") == 4


def test_a_unique_job_refused_as_a_duplicate_is_not_counted_as_enqueued(registry: CollectorRegistry) -> None:
    app = Jobs(Config.from_dict({"workers": {"mode": "BackgroundAsync"}}))
    app.register(Unique)
    enable_metrics(app, registry)
    try:
        first = app.perform_later(Unique, {"n": 1})
        again = app.perform_later(Unique, {"n": 1})  # waiting or running: the first one's handle
        assert again.id == first.id
        assert value(registry, "unified_jobs_jobs_enqueued_total", "metrics.Unique") == 1
    finally:
        app.shutdown()


def test_a_failing_observer_never_fails_a_job(jobs: Jobs, registry: CollectorRegistry) -> None:
    class Broken(JobObserver):
        def enqueuing(self, jobs: Any) -> Any:
            raise RuntimeError("observer bug")

        def starting(self, job: Job, parent: Any) -> Any:
            raise RuntimeError("observer bug")

        def ended(self, job: Job, outcome: Outcome, state: Any) -> None:
            raise RuntimeError("observer bug")

    jobs.executor.add_observer(Broken())
    jobs.perform_later(Ok, {})
    settle(lambda: value(registry, "unified_jobs_jobs_succeeded_total", "metrics.Ok") == 1)
    assert value(registry, "unified_jobs_jobs_enqueued_total", "metrics.Ok") == 1


def test_a_job_failed_outside_the_executor_is_counted_as_failed(registry: CollectorRegistry) -> None:
    app = Jobs(Config.from_dict({"workers": {"mode": "ForegroundBlocking"}}))
    app.register(Ok)
    enable_metrics(app, registry)
    lost = Outcome.from_error("failed", RuntimeError("worker lost"), 1)
    app.executor.settled_elsewhere(Job("j1", "metrics.Ok", "default", "{}"), lost)
    app.executor.settled_elsewhere(Job("j2", "not.a.Worker", "default", "{}"), lost)  # adopted task
    assert value(registry, "unified_jobs_jobs_failed_total", "metrics.Ok") == 1
    assert (
        registry.get_sample_value(
            "unified_jobs_jobs_failed_total", {"worker": "not.a.Worker", "queue": "default"}
        )
        is None
    )


# -- the queue gauges --------------------------------------------------------------------------


@pytest.fixture
def app(registry: CollectorRegistry) -> Iterator[Jobs]:
    jobs = Jobs(Config.from_dict({"workers": {"mode": "ForegroundBlocking"}}))
    jobs.register(Ok)
    enable_metrics(jobs, registry)
    yield jobs
    jobs.shutdown()


def test_queue_gauges_come_from_the_store_at_each_scrape(
    app: Jobs, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def queue_stats() -> list[QueueStats]:
        calls.append(1)
        return [
            QueueStats(
                "default",
                queued=3,
                scheduled=1,
                processing=2,
                failed=4,
                oldest_queued_at=utcnow() - timedelta(seconds=90),
            ),
            QueueStats("mail"),
        ]

    monkeypatch.setattr(app.adapter.store, "queue_stats", queue_stats)
    assert calls == []  # registering the collector read nothing
    gauge = registry.get_sample_value
    assert gauge("unified_jobs_store_up") == 1
    assert gauge("unified_jobs_queue_stats_supported") == 1
    assert gauge("unified_jobs_queue_depth", {"queue": "default", "state": "queued"}) == 3
    assert gauge("unified_jobs_queue_depth", {"queue": "default", "state": "scheduled"}) == 1
    assert gauge("unified_jobs_queue_depth", {"queue": "default", "state": "processing"}) == 2
    assert gauge("unified_jobs_queue_depth", {"queue": "default", "state": "failed"}) == 4
    assert gauge("unified_jobs_queue_depth", {"queue": "mail", "state": "queued"}) == 0
    age = gauge("unified_jobs_queue_oldest_job_age_seconds", {"queue": "default"})
    assert age is not None and 89 <= age < 120
    assert gauge("unified_jobs_queue_oldest_job_age_seconds", {"queue": "mail"}) == 0
    assert len(calls) > 1  # every read of the registry asked the store again


def test_a_store_without_queue_stats_or_down_leaves_the_counters_served(
    app: Jobs, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app.perform_later(Ok, {})

    def unsupported() -> list[QueueStats]:
        raise NotImplementedError("this store keeps no queue statistics")

    monkeypatch.setattr(app.adapter.store, "queue_stats", unsupported)
    body, _ = render_metrics(app)
    text = body.decode()
    assert "unified_jobs_queue_stats_supported 0.0" in text
    assert "unified_jobs_queue_depth" not in text
    assert 'unified_jobs_jobs_succeeded_total{queue="default",worker="metrics.Ok"} 1.0' in text

    def down() -> list[QueueStats]:
        raise ConnectionError("connection refused")

    monkeypatch.setattr(app.adapter.store, "queue_stats", down)
    for _ in range(3):
        text = render_metrics(app)[0].decode()
        assert "unified_jobs_store_up 0.0" in text
        assert 'unified_jobs_jobs_succeeded_total{queue="default",worker="metrics.Ok"} 1.0' in text
    warnings = [r for r in caplog.records if "could not read queue statistics" in r.getMessage()]
    assert len(warnings) == 1, "a store that stays down is logged once, not at every scrape"
    assert "connection refused" in warnings[0].getMessage()

    monkeypatch.setattr(app.adapter.store, "queue_stats", lambda: [QueueStats("default", queued=1)])
    assert registry.get_sample_value("unified_jobs_store_up") == 1
    assert any("answers queue statistics again" in r.getMessage() for r in caplog.records)


# -- serving -----------------------------------------------------------------------------------


def test_render_metrics_speaks_prometheus_text_and_openmetrics(app: Jobs) -> None:
    app.perform_later(Ok, {})
    body, content_type = render_metrics(app)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"# TYPE unified_jobs_jobs_started_total counter" in body
    body, content_type = render_metrics(app, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    assert b'unified_jobs_jobs_started_total{queue="default",worker="metrics.Ok"} 1.0' in body


def test_the_asgi_app_serves_the_metrics(app: Jobs) -> None:
    asgi = metrics_app(app)
    app.perform_later(Ok, {})

    async def scrape() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
            return await client.get("/metrics"), await client.post("/metrics")

    got, posted = asyncio.run(scrape())
    assert got.status_code == 200
    assert got.headers["content-type"].startswith("text/plain")
    assert 'unified_jobs_jobs_succeeded_total{queue="default",worker="metrics.Ok"} 1.0' in got.text
    assert posted.status_code == 405


def test_without_prometheus_client_enabling_says_which_extra_to_install(
    app: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'unified-jobs\[metrics\]'"):
        enable_metrics(app)


def test_scrapes_drop_the_live_gauges_of_a_process_that_was_killed(tmp_path: Path) -> None:
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(dead.stdout)
    for pid, value_ in ((dead_pid, 5.0), (os.getpid(), 7.0)):
        files = MmapedDict(str(tmp_path / f"gauge_livesum_{pid}.db"))
        files.write_value(mmap_key("g", "g", ("p",), (str(pid),), "doc"), value_, 0.0)
        files.close()
    registry = CollectorRegistry()
    registry.register(ProcessFiles(str(tmp_path)))
    samples = {s.labels["p"]: s.value for m in registry.collect() for s in m.samples}
    assert samples == {str(os.getpid()): 7.0}
    assert not (tmp_path / f"gauge_livesum_{dead_pid}.db").exists()
