"""unified_jobs on Redis against plain Celery on Redis, in the same run.

    .venv/bin/python bench/bench_redis_queue.py [--jobs 5000]

Measures, for each side: enqueue rate from one process (one job per call, and in bulk: a
Celery group against ``perform_all_later``), drain rate of a prefork c=2 worker
(first to last job), and enqueue-to-start latency (p50/p99) of jobs sent one at a time to an
idle worker. Prints each figure and the ratio unified_jobs / Celery (>1 is better for rates,
<1 is better for latency). Uses Redis databases 8 and 9 and flushes them.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import redis_apps  # noqa: E402

BIN = Path(sys.executable).parent
SIDES = {
    "celery": [str(BIN / "celery"), "-A", "bench.redis_apps:plain", "worker", "-Q", "bench-plain"],
    "unified_jobs": [
        str(BIN / "unified-jobs"),
        "--app",
        "bench.redis_apps:jobs",
        "start",
        "--worker",
        "-q",
        "bench-uj",
    ],
}
COMMON = ["--concurrency", "2", "--loglevel", "WARNING"]
CELERY_OPTS = ["--without-mingle", "--without-gossip", "--without-heartbeat"]


def reset() -> None:
    redis_apps.STATS.flushdb()
    redis_apps.jobs.celery.connection_for_write().default_channel.client.flushdb()


def enqueue(side: str, n: int) -> float:
    start = time.perf_counter()
    if side == "celery":
        for _ in range(n):
            redis_apps.plain_noop.apply_async((time.time(),))
    else:
        for _ in range(n):
            redis_apps.Noop.perform_later({"sent": time.time()})
    return n / (time.perf_counter() - start)


def enqueue_bulk(side: str, n: int, chunk: int = 1000) -> float:
    """Celery's bulk form (a group) against ``perform_all_later``, ``chunk`` jobs per call."""
    from celery import group

    start = time.perf_counter()
    for first in range(0, n, chunk):
        size = min(chunk, n - first)
        if side == "celery":
            group(redis_apps.plain_noop.s(time.time()) for _ in range(size)).apply_async()
        else:
            redis_apps.Noop.perform_all_later([{"sent": time.time()} for _ in range(size)])
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
    while int(redis_apps.STATS.get("done") or 0) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {redis_apps.STATS.get('done')} of {n} jobs ran in {timeout}s")
        time.sleep(0.02)


def drain(side: str, n: int) -> float:
    reset()
    enqueue(side, n)
    proc = start_worker(side)
    try:
        wait_done(n)
    finally:
        stop(proc)
    first, last = float(redis_apps.STATS.get("first")), float(redis_apps.STATS.get("last"))
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
    samples = sorted(float(x) * 1000 for x in redis_apps.STATS.lrange("latency", 0, -1))
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
    print(f"\nRedis, {opts.jobs} no-op jobs; latency over {opts.latency_jobs} jobs sent 10 ms apart")
    print(f"{'figure':32} {'celery':>10} {'unified_jobs':>13} {'ratio':>7}")
    for figure in results["celery"]:
        c, u = results["celery"][figure], results["unified_jobs"][figure]
        print(f"{figure:32} {c:10.1f} {u:13.1f} {u / c:7.2f}")


if __name__ == "__main__":
    main()
