"""What the queue benchmarks share (``bench_redis_queue``, ``bench_rabbitmq_queue``): the
no-op job on both sides (a plain Celery task, a ``Worker``) and its bookkeeping, how each side
enqueues, the worker processes, and the measurements and their table.

Each job does the same work on either side: ``note(sent)``, one pipelined Redis write of a
counter, first/last timestamps and its latency, to ``$BENCH_STATS_URL`` (Redis database 8,
which ``reset`` callers flush). A benchmark gives its sides as worker command lines plus an
``enqueue(side, n)`` and a ``reset()``; ``measure`` runs each figure for each side.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery import Celery, group
from pydantic import BaseModel

from unified_jobs import Worker

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STATS = redis.Redis.from_url(os.environ.get("BENCH_STATS_URL", "redis://127.0.0.1:6379/8"))
COMMON = ["--concurrency", "2", "--loglevel", "WARNING"]
CELERY_OPTS = ["--without-mingle", "--without-gossip", "--without-heartbeat"]


def note(sent: float) -> None:
    """A job's bookkeeping (the same on both sides)."""
    now = time.time()
    pipe = STATS.pipeline(transaction=False)
    pipe.incr("done")
    pipe.setnx("first", now)
    pipe.set("last", now)
    pipe.rpush("latency", now - sent)
    pipe.execute()


def plain_noop(sent: float) -> None:
    note(sent)


def plain_app(broker: str) -> tuple[Celery, Any]:
    """Plain Celery on ``broker``, with the no-op task (on the queue bench-plain)."""
    plain = Celery("bench_plain", broker=broker)
    plain.conf.task_default_queue = "bench-plain"
    return plain, plain.task(name="bench.plain_noop")(plain_noop)


class NoopArgs(BaseModel):
    sent: float


class Noop(Worker[NoopArgs]):
    """The no-op job on the unified_jobs side (on the queue bench-uj)."""

    name = "bench.uj_noop"
    queue = "bench-uj"

    def perform(self, args: NoopArgs) -> None:
        note(args.sent)


def enqueuer(task: Any, worker: type[Worker[Any]]) -> Enqueue:
    """``enqueue(side, n)``: n jobs, one per call (``task.apply_async`` or ``perform_later``)."""

    def enqueue(side: str, n: int) -> float:
        start = time.perf_counter()
        if side == "celery":
            for _ in range(n):
                task.apply_async((time.time(),))
        else:
            for _ in range(n):
                worker.perform_later({"sent": time.time()})
        return n / (time.perf_counter() - start)

    return enqueue


def bulk_enqueuer(task: Any, worker: type[Worker[Any]], chunk: int = 1000) -> Enqueue:
    """``enqueue(side, n)`` in bulk: Celery's group against ``perform_all_later``, ``chunk`` a call."""

    def enqueue_bulk(side: str, n: int) -> float:
        start = time.perf_counter()
        for first in range(0, n, chunk):
            size = min(chunk, n - first)
            if side == "celery":
                group(task.s(time.time()) for _ in range(size)).apply_async()
            else:
                worker.perform_all_later([{"sent": time.time()} for _ in range(size)])
        return n / (time.perf_counter() - start)

    return enqueue_bulk


def sides(module: str, plain: str = "plain", jobs: str = "jobs") -> dict[str, list[str]]:
    """The worker command lines: ``celery worker`` on bench-plain, ``start --worker`` on bench-uj."""
    return {
        "celery": [str(BIN / "celery"), "-A", f"{module}:{plain}", "worker", "-Q", "bench-plain"],
        "unified_jobs": [
            str(BIN / "unified-jobs"),
            "--app",
            f"{module}:{jobs}",
            "start",
            "--worker",
            "-q",
            "bench-uj",
        ],
    }


def start_worker(argv: list[str], side: str) -> subprocess.Popen[bytes]:
    argv = argv + COMMON + (CELERY_OPTS if side == "celery" else ["--", *CELERY_OPTS])
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


Enqueue = Callable[[str, int], float]


def drain(argv: list[str], side: str, n: int, reset: Callable[[], None], enqueue: Enqueue) -> float:
    """Jobs/s of a worker started on ``n`` queued jobs (first job to last)."""
    reset()
    enqueue(side, n)
    proc = start_worker(argv, side)
    try:
        wait_done(n)
    finally:
        stop(proc)
    first, last = float(STATS.get("first") or 0), float(STATS.get("last") or 0)
    return n / (last - first)


def latency(
    argv: list[str], side: str, n: int, reset: Callable[[], None], enqueue: Enqueue
) -> tuple[float, float]:
    """Enqueue-to-start p50 and p99 (ms) of jobs sent 10 ms apart to an idle worker."""
    reset()
    proc = start_worker(argv, side)
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


def measure(
    workers: dict[str, list[str]],
    reset: Callable[[], None],
    enqueue: Enqueue,
    enqueue_bulk: Enqueue,
    jobs: int,
    latency_jobs: int,
) -> dict[str, dict[str, float]]:
    """Every figure for each side, in the same run."""
    results: dict[str, dict[str, float]] = {}
    for side, argv in workers.items():
        reset()
        r = results[side] = {}
        r["enqueue jobs/s"] = enqueue(side, jobs)
        reset()
        r["bulk enqueue jobs/s (1000/call)"] = enqueue_bulk(side, jobs)
        r["drain jobs/s (prefork c=2)"] = drain(argv, side, jobs, reset, enqueue)
        r["latency p50 ms"], r["latency p99 ms"] = latency(argv, side, latency_jobs, reset, enqueue)
    reset()
    return results


def print_table(
    title: str, results: dict[str, dict[str, float]], extra: dict[str, float] | None = None
) -> None:
    """Each figure, both sides and the ratio unified_jobs / Celery; ``extra``: more unified_jobs
    figures against Celery's enqueue rate."""
    print(f"\n{title}")
    print(f"{'figure':32} {'celery':>10} {'unified_jobs':>13} {'ratio':>7}")
    celery, ours = results["celery"], results["unified_jobs"]
    rows = [(figure, celery[figure], ours[figure]) for figure in celery]
    rows += [(figure, celery["enqueue jobs/s"], value) for figure, value in (extra or {}).items()]
    for figure, c, u in rows:
        print(f"{figure:32} {c:10.1f} {u:13.1f} {u / c:7.2f}")
