"""unified_jobs on RabbitMQ against plain Celery on RabbitMQ, in the same run.

    .venv/bin/python bench/bench_rabbitmq_queue.py [--jobs 5000]

Measures, for each side: enqueue rate from one process (one job per call, and in bulk: a
Celery group against ``perform_all_later``), drain rate of a prefork c=2 worker (first to last
job), and enqueue-to-start latency (p50/p99) of jobs sent one at a time to an idle worker.
Prints each figure and the ratio unified_jobs / Celery (>1 is better for rates, <1 is better
for latency).

The sides differ in what unified_jobs always does: publisher confirms (a publish returns once
RabbitMQ has the message), acks after the job (plain Celery acks before), priority queues, and
the job store in Redis (a record per job: enqueued, started, finished). Both do the same work per
job (one Redis INCR plus a timestamp). Uses the queues ``bench-plain`` and ``bench-uj`` of
$BENCH_AMQP_URL (default: the ``/`` vhost of 127.0.0.1) and purges them; Redis databases 8
(figures) and 4 (the job store), which it flushes.

This file is also the two apps the worker subprocesses run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis
from celery import Celery, group
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unified_jobs import Config, Jobs, Worker  # noqa: E402

BROKER = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
STORE = os.environ.get("BENCH_STORE_URL", "redis://127.0.0.1:6379/4")
STATS = redis.Redis.from_url(os.environ.get("BENCH_STATS_URL", "redis://127.0.0.1:6379/8"))


def note(sent: float) -> None:
    now = time.time()
    pipe = STATS.pipeline(transaction=False)
    pipe.incr("done")
    pipe.setnx("first", now)
    pipe.set("last", now)
    pipe.rpush("latency", now - sent)
    pipe.execute()


# -- plain Celery ------------------------------------------------------------------------------
plain = Celery("bench_plain", broker=BROKER)
plain.conf.task_default_queue = "bench-plain"


@plain.task(name="bench.plain_noop")
def plain_noop(sent: float) -> None:
    note(sent)


# -- unified_jobs ------------------------------------------------------------------------------
class NoopArgs(BaseModel):
    sent: float


class Noop(Worker[NoopArgs]):
    name = "bench.uj_noop"
    queue = "bench-uj"

    def perform(self, args: NoopArgs) -> None:
        note(args.sent)


jobs = Jobs(
    Config.from_dict(
        {
            "workers": {"mode": "BackgroundQueue"},
            "queue": {"kind": "RabbitMQ", "uri": BROKER, "store_uri": STORE},
        }
    )
)
jobs.register(Noop)


class UnconfirmedNoop(Noop):
    """Noop, on an app with ``confirm_publish: false`` (only enqueued, to price the confirms)."""

    name = "bench.uj_noop_unconfirmed"


unconfirmed = Jobs(
    Config.from_dict(
        {
            "workers": {"mode": "BackgroundQueue"},
            "queue": {"kind": "RabbitMQ", "uri": BROKER, "store_uri": STORE, "confirm_publish": False},
        }
    )
)
unconfirmed.register(UnconfirmedNoop)

# -- the benchmark -----------------------------------------------------------------------------
BIN = Path(sys.executable).parent
MODULE = "bench.bench_rabbitmq_queue"
SIDES = {
    "celery": [str(BIN / "celery"), "-A", f"{MODULE}:plain", "worker", "-Q", "bench-plain"],
    "unified_jobs": [
        str(BIN / "unified-jobs"),
        "--app",
        f"{MODULE}:jobs",
        "start",
        "--worker",
        "-q",
        "bench-uj",
    ],
}
COMMON = ["--concurrency", "2", "--loglevel", "WARNING"]
CELERY_OPTS = ["--without-mingle", "--without-gossip", "--without-heartbeat"]


def reset() -> None:
    STATS.flushdb()
    redis.Redis.from_url(STORE).flushdb()
    with plain.connection_for_write() as conn:
        for queue in ("bench-plain", "bench-uj"):
            channel = conn.channel()
            with contextlib.suppress(*conn.channel_errors):  # not declared yet
                channel.queue_purge(queue)
            with contextlib.suppress(Exception):  # a 404 closed it
                channel.close()


def enqueue(side: str, n: int) -> float:
    start = time.perf_counter()
    if side == "celery":
        for _ in range(n):
            plain_noop.apply_async((time.time(),))
    elif side == "unconfirmed":
        for _ in range(n):
            UnconfirmedNoop.perform_later({"sent": time.time()})
    else:
        for _ in range(n):
            Noop.perform_later({"sent": time.time()})
    return n / (time.perf_counter() - start)


def enqueue_bulk(side: str, n: int, chunk: int = 1000) -> float:
    """Celery's bulk form (a group) against ``perform_all_later``, ``chunk`` jobs per call."""
    start = time.perf_counter()
    for first in range(0, n, chunk):
        size = min(chunk, n - first)
        if side == "celery":
            group(plain_noop.s(time.time()) for _ in range(size)).apply_async()
        else:
            Noop.perform_all_later([{"sent": time.time()} for _ in range(size)])
    return n / (time.perf_counter() - start)


def start_worker(side: str) -> subprocess.Popen[bytes]:
    argv = SIDES[side] + COMMON + (CELERY_OPTS if side == "celery" else ["--", *CELERY_OPTS])
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_done(n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while int(STATS.get("done") or 0) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {STATS.get('done')} of {n} jobs ran in {timeout}s")
        time.sleep(0.02)


def drain(side: str, n: int) -> float:
    reset()
    enqueue(side, n)
    proc = start_worker(side)
    try:
        wait_done(n)
    finally:
        stop(proc)
    first, last = float(STATS.get("first") or 0), float(STATS.get("last") or 0)
    return n / (last - first)


def latency(side: str, n: int) -> tuple[float, float]:
    reset()
    proc = start_worker(side)
    try:
        time.sleep(4)  # let it connect and go idle
        for _ in range(n):
            enqueue(side, 1)
            time.sleep(0.01)
        wait_done(n)
    finally:
        stop(proc)
    samples = sorted(float(x) * 1000 for x in STATS.lrange("latency", 0, -1))
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    opts = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    for side in SIDES:
        reset()
        r = results[side] = {}
        r["enqueue jobs/s"] = enqueue(side, opts.jobs)
        reset()
        r["bulk enqueue jobs/s (1000/call)"] = enqueue_bulk(side, opts.jobs)
        r["drain jobs/s (prefork c=2)"] = drain(side, opts.jobs)
        r["latency p50 ms"], r["latency p99 ms"] = latency(side, opts.latency_jobs)
    reset()
    unconfirmed_rate = enqueue("unconfirmed", opts.jobs)
    reset()
    print(f"\nRabbitMQ, {opts.jobs} no-op jobs; latency over {opts.latency_jobs} jobs sent 10 ms apart")
    print(f"{'figure':32} {'celery':>10} {'unified_jobs':>13} {'ratio':>7}")
    for figure in results["celery"]:
        c, u = results["celery"][figure], results["unified_jobs"][figure]
        print(f"{figure:32} {c:10.1f} {u:13.1f} {u / c:7.2f}")
    c, u = results["celery"]["enqueue jobs/s"], unconfirmed_rate
    print(f"{'enqueue, confirm_publish: false':32} {c:10.1f} {u:13.1f} {u / c:7.2f}")


if __name__ == "__main__":
    main()
