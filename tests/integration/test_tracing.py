"""OpenTelemetry spans of enqueue and perform: the perform span is a child of the enqueue span
that made the job (itself a child of the span current at the enqueue, a web request's), in
the in-process modes (the SDK's in-memory exporter) and across a real worker process on the
SQLite kind (which writes its spans to a file, ``observability_app``)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import sql_prefix
from tests.contract.contract_app import AsyncEcho, Echo, Fail, FlakyTwice, create_app
from tests.integration.observability_app import span_record
from tests.procs import ROOT, WorkerProcess, read_records, unified_jobs_worker, wait_until
from unified_jobs import Jobs
from unified_jobs.observability import disable_tracing, enable_tracing

pytestmark = pytest.mark.timeout(90)

PREFIX = sql_prefix("tracing")
FAST = ("--", "--without-mingle", "--without-gossip")


class Spans:
    """A tracer provider of the test's own (the global one is left alone) and its spans."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        #: The span of "the request" that enqueues.
        self.tracer = self.provider.get_tracer("tests.request")

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 10.0) -> list[ReadableSpan]:
        assert wait_until(lambda: len(self.named(name)) >= count, timeout), (
            f"{count} span(s) {name!r} expected; got {[s.name for s in self.exporter.get_finished_spans()]}"
        )
        return self.named(name)


@pytest.fixture
def spans() -> Spans:
    return Spans()


@pytest.fixture(params=["ForegroundBlocking", "BackgroundAsync"])
def traced(request: pytest.FixtureRequest, spans: Spans, tmp_path: Path) -> Iterator[Jobs]:
    jobs = create_app({"workers": {"mode": request.param}}, str(tmp_path / "record.jsonl"))
    enable_tracing(jobs, tracer_provider=spans.provider)
    yield jobs
    jobs.shutdown()


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_the_perform_span_is_a_child_of_the_enqueue_span_of_the_request(traced: Jobs, spans: Spans) -> None:
    with spans.tracer.start_as_current_span("GET /orders") as request:
        handle = traced.perform_later(Echo, {"n": 1})
    (perform,) = spans.wait_for("unified_jobs.perform contract.Echo")
    (enqueue,) = spans.named("unified_jobs.enqueue contract.Echo")

    assert parent_of(enqueue) == request.get_span_context().span_id
    assert parent_of(perform) == enqueue.context.span_id
    assert perform.context.trace_id == enqueue.context.trace_id == request.get_span_context().trace_id
    assert (enqueue.kind, perform.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert enqueue.attributes is not None and perform.attributes is not None
    assert enqueue.attributes["messaging.operation.type"] == "send"
    assert enqueue.attributes["messaging.message.id"] == handle.id
    assert dict(perform.attributes) == {
        "messaging.system": "unified_jobs",
        "messaging.operation.type": "process",
        "messaging.operation.name": "perform",
        "messaging.destination.name": "default",
        "messaging.message.id": handle.id,
        "unified_jobs.job.id": handle.id,
        "unified_jobs.job.worker": "contract.Echo",
        "unified_jobs.job.attempt": 1,
        "unified_jobs.job.outcome": "succeeded",
    }
    assert perform.status.status_code == StatusCode.UNSET


def test_an_async_perform_and_aperform_later_are_traced_alike(traced: Jobs, spans: Spans) -> None:
    async def request() -> None:
        with spans.tracer.start_as_current_span("POST /async"):
            await traced.aperform_later(AsyncEcho, {"n": 2})

    asyncio.run(request())
    (perform,) = spans.wait_for("unified_jobs.perform contract.AsyncEcho")
    (enqueue,) = spans.named("unified_jobs.enqueue contract.AsyncEcho")
    (web,) = spans.named("POST /async")
    assert parent_of(perform) == enqueue.context.span_id
    assert parent_of(enqueue) == web.context.span_id


def test_a_batch_is_one_enqueue_span_parent_of_every_perform(traced: Jobs, spans: Spans) -> None:
    traced.perform_all_later(Echo, [{"n": n} for n in range(3)])
    performs = spans.wait_for("unified_jobs.perform contract.Echo", 3)
    (enqueue,) = spans.named("unified_jobs.enqueue contract.Echo")
    assert enqueue.attributes is not None
    assert enqueue.attributes["messaging.batch.message_count"] == 3
    assert {parent_of(p) for p in performs} == {enqueue.context.span_id}


def test_a_failed_attempt_records_its_error_and_every_retry_has_the_enqueue_as_parent(
    traced: Jobs, spans: Spans
) -> None:
    if traced.mode == "ForegroundBlocking":
        with pytest.raises(RuntimeError, match="failed on purpose"):
            traced.perform_later(Fail, {"n": 3})
    else:
        traced.perform_later(Fail, {"n": 3})
    traced.perform_later(FlakyTwice, {"fail_times": 1})

    (failed,) = spans.wait_for("unified_jobs.perform contract.Fail")
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "RuntimeError: job 3 failed on purpose"
    (event,) = [e for e in failed.events if e.name == "exception"]
    assert event.attributes is not None and event.attributes["exception.type"] == "RuntimeError"

    first, second = sorted(
        spans.wait_for("unified_jobs.perform contract.FlakyTwice", 2),
        key=lambda s: s.attributes["unified_jobs.job.attempt"] if s.attributes else 0,
    )
    (enqueue,) = spans.named("unified_jobs.enqueue contract.FlakyTwice")
    assert first.attributes is not None and second.attributes is not None
    assert (first.attributes["unified_jobs.job.attempt"], second.attributes["unified_jobs.job.attempt"]) == (
        1,
        2,
    )
    assert first.attributes["unified_jobs.job.outcome"] == "retried"
    assert first.status.status_code == StatusCode.ERROR
    assert second.attributes["unified_jobs.job.outcome"] == "succeeded"
    assert parent_of(first) == parent_of(second) == enqueue.context.span_id


def test_tracing_can_be_turned_off(traced: Jobs, spans: Spans) -> None:
    disable_tracing(traced)
    traced.perform_later(Echo, {"n": 4})
    time.sleep(0.2)  # a BackgroundAsync job that would have made spans has run by now
    assert spans.exporter.get_finished_spans() == ()


def test_without_the_opentelemetry_api_an_app_works_and_traces_nothing(tmp_path: Path) -> None:
    # A fresh interpreter where the API cannot be imported, as if the otel extra were absent.
    code = """
import sys
sys.modules["opentelemetry"] = None
from tests.contract.contract_app import Echo, create_app
jobs = create_app({"workers": {"mode": "ForegroundBlocking"}}, sys.argv[1])
jobs.perform_later(Echo, {"n": 1})
assert jobs.executor.observers == (), jobs.executor.observers
assert not any(name.startswith("opentelemetry.") for name in sys.modules)
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "record.jsonl")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert [r["args"]["n"] for r in read_records(tmp_path / "record.jsonl")] == [1]


# -- across a worker process -------------------------------------------------------------------


class Remote:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config = {
            "workers": {"mode": "BackgroundQueue"},
            "queue": {"kind": "Sqlite", "uri": f"sqlite:///{folder}/jobs.db", "table_prefix": PREFIX},
        }
        self.record = folder / "record.jsonl"
        self.span_file = folder / "spans.jsonl"

    def worker_spans(self, name: str) -> list[dict[str, Any]]:
        return [s for s in read_records(self.span_file) if s["name"] == name]

    def wait_for(self, name: str, count: int, worker: WorkerProcess) -> list[dict[str, Any]]:
        ok = wait_until(lambda: len(self.worker_spans(name)) >= count, 30)
        assert ok, f"no {count} {name!r} span(s) from the worker:\n{worker.output()[-3000:]}"
        return self.worker_spans(name)


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Remote, WorkerProcess]]:
    folder = tmp_path_factory.mktemp("tracing")
    remote = Remote(folder)
    create_app(remote.config, str(remote.record)).shutdown()  # the tables, before the worker polls
    env = {
        "UJ_CONTRACT_CONFIG": json.dumps(remote.config),
        "UJ_CONTRACT_RECORD": str(remote.record),
        "UJ_TRACE_FILE": str(remote.span_file),
    }
    app = "tests.integration.observability_app:app_from_env"
    worker = unified_jobs_worker(app, env, folder / "worker.log", "-c", "2", *FAST)
    try:
        worker.wait_for_output("ready.", timeout=60)
        yield remote, worker
    finally:
        worker.stop()


@pytest.fixture
def producer(remote: tuple[Remote, WorkerProcess], spans: Spans) -> Iterator[Jobs]:
    jobs = create_app(remote[0].config, str(remote[0].record))
    enable_tracing(jobs, tracer_provider=spans.provider)
    yield jobs
    jobs.shutdown()


def test_across_a_worker_process_the_perform_span_is_a_child_of_the_enqueue_span(
    remote: tuple[Remote, WorkerProcess], producer: Jobs, spans: Spans
) -> None:
    files, worker = remote
    with spans.tracer.start_as_current_span("GET /checkout") as request:
        handle = producer.perform_later(Echo, {"n": 10})
    (enqueue,) = spans.named("unified_jobs.enqueue contract.Echo")
    assert parent_of(enqueue) == request.get_span_context().span_id
    assert enqueue.attributes is not None and enqueue.attributes["messaging.system"] == "sqlite"

    (perform,) = [
        s
        for s in files.wait_for("unified_jobs.perform contract.Echo", 1, worker)
        if s["attributes"]["unified_jobs.job.id"] == handle.id
    ]
    assert perform["parent_id"] == f"{enqueue.context.span_id:016x}"
    assert perform["trace_id"] == f"{enqueue.context.trace_id:032x}"
    assert perform["pid"] != worker.proc.pid, "the span should come from a pool process"
    assert perform["kind"] == "CONSUMER"
    assert perform["attributes"]["messaging.system"] == "sqlite"
    assert perform["attributes"]["messaging.destination.name"] == "default"
    assert perform["status"] == "UNSET"
    assert span_record(enqueue)["span_id"] == perform["parent_id"]


def test_across_a_worker_process_a_retry_keeps_the_parent_and_a_failure_is_an_error(
    remote: tuple[Remote, WorkerProcess], producer: Jobs, spans: Spans
) -> None:
    files, worker = remote
    flaky = producer.perform_later(FlakyTwice, {"fail_times": 1})
    failing = producer.perform_later(Fail, {"n": 11})
    enqueues = {
        s.attributes["unified_jobs.job.id"]: s for s in spans.exporter.get_finished_spans() if s.attributes
    }

    attempts = files.wait_for("unified_jobs.perform contract.FlakyTwice", 2, worker)
    mine = sorted(
        (s for s in attempts if s["attributes"]["unified_jobs.job.id"] == flaky.id),
        key=lambda s: s["attributes"]["unified_jobs.job.attempt"],
    )
    assert [s["attributes"]["unified_jobs.job.attempt"] for s in mine] == [1, 2]
    assert [s["attributes"]["unified_jobs.job.outcome"] for s in mine] == ["retried", "succeeded"]
    assert [s["status"] for s in mine] == ["ERROR", "UNSET"]
    expected_parent = f"{enqueues[flaky.id].context.span_id:016x}"
    assert {s["parent_id"] for s in mine} == {expected_parent}
    assert len({s["trace_id"] for s in mine}) == 1

    (failed,) = [
        s
        for s in files.wait_for("unified_jobs.perform contract.Fail", 1, worker)
        if s["attributes"]["unified_jobs.job.id"] == failing.id
    ]
    assert failed["status"] == "ERROR"
    assert failed["parent_id"] == f"{enqueues[failing.id].context.span_id:016x}"
