"""Metrics and tracing: what they cost an attempt, and /metrics moving while a worker drains.

    .venv/bin/python bench/bench_metrics.py [--jobs 3000] [--attempts 100000] [--skip-drain]

1. Cost: the executor's ``run`` of a no-op Worker job (``perform`` returns at once), in this
   process, µs per attempt, best of 5 rounds: with no observers (metrics and tracing off, as
   before either existed); with the tracing observer while no TracerProvider is set (the
   opentelemetry API alone); with metrics on; with an SDK TracerProvider (a SimpleSpanProcessor
   and an exporter that drops the spans); with both. And the same for ``perform_later`` in
   ForegroundBlocking mode (the enqueue observers, then the attempt).
2. Drain: a worker (``unified-jobs start --worker --metrics-port``, prefork concurrency 2) on a
   SQLite queue in a temporary folder drains N no-op jobs enqueued 500 a batch; its /metrics
   is scraped before, every quarter second during, and after, and the counters printed.

This file is also the worker's app (``bench.bench_metrics:app_from_env``, configured by
UJ_BM_URI).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from unified_jobs import Config, Jobs, Worker

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PREFIX = "ujbench_metrics_"


class NoopArgs(BaseModel):
    i: int


class Noop(Worker[NoopArgs]):
    name = "bench.metrics.Noop"

    def perform(self, args: NoopArgs) -> None:
        return None


def app_from_env() -> Jobs:
    """The worker's app (and the producer's): the no-op job on a SQLite queue."""
    queue = {"kind": "Sqlite", "uri": os.environ["UJ_BM_URI"], "table_prefix": PREFIX}
    jobs = Jobs(Config.from_dict({"workers": {"mode": "BackgroundQueue"}, "queue": queue}))
    jobs.register(Noop)
    return jobs


# -- 1. cost -----------------------------------------------------------------------------------


def _best(fn: Callable[[], Any], n: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def cost(attempts: int) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from prometheus_client import CollectorRegistry

    from unified_jobs.core.job import Job
    from unified_jobs.observability import disable_tracing, enable_metrics, enable_tracing
    from unified_jobs.observability.metrics import MetricsObserver

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(Drop()))

    def app(setup: str) -> Jobs:
        jobs = Jobs(Config.from_dict({"workers": {"mode": "ForegroundBlocking"}}))
        jobs.register(Noop)
        disable_tracing(jobs)
        if "api" in setup:
            enable_tracing(jobs)  # the global provider, which nothing set
        if "sdk" in setup:
            enable_tracing(jobs, tracer_provider=sdk)
        if "metrics" in setup:
            enable_metrics(jobs, CollectorRegistry())
        return jobs

    setups = {
        "off (no observers)": "",
        "tracing, no provider set": "api",
        "metrics": "metrics",
        "tracing to an SDK": "sdk",
        "metrics + tracing to an SDK": "metrics sdk",
    }
    job = Job("bench-job", Noop.name, "default", '{"i": 1}')
    print(f"{'':32} {'executor.run':>14} {'perform_later':>14}   (µs per job, best of 5)")
    base_run = base_enqueue = 0.0
    for label, setup in setups.items():
        jobs = app(setup)
        assert any(isinstance(o, MetricsObserver) for o in jobs.executor.observers) == ("metrics" in setup)
        run = _best(lambda jobs=jobs: jobs.executor.run(job), attempts)  # type: ignore[misc]
        enqueue = _best(lambda jobs=jobs: jobs.perform_later(Noop, {"i": 1}), attempts // 5)  # type: ignore[misc]
        if not setup:
            base_run, base_enqueue = run, enqueue
            print(f"{label:32} {run:14.2f} {enqueue:14.2f}")
        else:
            added = f"{run:8.2f} +{run - base_run:4.1f} {enqueue:8.2f} +{enqueue - base_enqueue:4.1f}"
            print(f"{label:32} {added}")
        jobs.shutdown()


# -- 2. drain ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _counters(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("worker") == Noop.name and sample.name.endswith("_total"):
                found[sample.name.removeprefix("unified_jobs_jobs_").removesuffix("_total")] = sample.value
            elif sample.name in ("unified_jobs_queue_depth", "unified_jobs_queue_stats_supported"):
                key = sample.labels.get("state", "stats_supported")
                found[f"depth:{key}" if "state" in sample.labels else key] = sample.value
    return found


def drain(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="uj-bench-metrics-") as tmp:
        os.environ["UJ_BM_URI"] = f"sqlite:///{tmp}/jobs.db"
        producer = app_from_env()
        producer.perform_later(Noop, {"i": -1})  # the tables exist before the worker polls
        port = _free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        argv = [
            str(BIN / "unified-jobs"),
            *("--app", "bench.bench_metrics:app_from_env", "start", "--worker", "-c", "2"),
            *("--metrics-port", str(port), "--loglevel", "WARNING"),
            *("--", "--without-mingle", "--without-gossip"),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        rows: list[tuple[str, dict[str, float]]] = []
        with open(Path(tmp) / "worker.log", "wb") as log:
            worker = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 60
                while not rows:
                    try:
                        rows.append(("before", _counters(url)))
                    except OSError:
                        if worker.poll() is not None or time.monotonic() > deadline:
                            raise SystemExit((Path(tmp) / "worker.log").read_text()[-3000:]) from None
                        time.sleep(0.2)
                while rows[-1][1].get("succeeded", 0) < 1:  # the warm-up job: the pool is up
                    time.sleep(0.1)
                    rows[-1] = ("before", _counters(url))
                start = time.monotonic()
                done = threading.Event()

                def scrape() -> None:  # while the jobs are enqueued and drained
                    while not done.wait(0.25):
                        rows.append((f"{time.monotonic() - start:5.2f}s", _counters(url)))

                scraper = threading.Thread(target=scrape)
                scraper.start()
                for first in range(0, n, 500):
                    producer.perform_all_later(Noop, [{"i": i} for i in range(first, min(n, first + 500))])
                enqueued = time.monotonic() - start
                while _counters(url).get("succeeded", 0) < n + 1 and time.monotonic() - start < 300:
                    time.sleep(0.1)
                done.set()
                scraper.join()
                rows.append(("after", _counters(url)))
            finally:
                worker.terminate()
                worker.wait(30)
                producer.shutdown()
    keys = ["started", "succeeded", "failed", "retried"]
    keys += sorted({k for _, row in rows for k in row if k.startswith("depth:")})
    print(f"\n{n} no-op jobs (enqueued in {enqueued:.2f}s, 500 a batch) through a SQLite worker")
    print("(prefork 2), its /metrics scraped every 0.25 s:")
    print(f"{'':10}" + "".join(f"{k:>17}" for k in keys))
    for label, row in rows:
        print(f"{label:10}" + "".join(f"{row.get(k, 0):17.0f}" for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--attempts", type=int, default=100_000)
    parser.add_argument("--skip-drain", action="store_true")
    options = parser.parse_args()
    cost(options.attempts)
    if not options.skip_drain:
        drain(options.jobs)


if __name__ == "__main__":
    main()
