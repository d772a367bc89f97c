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
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import queue_harness as harness  # noqa: E402
from bench import redis_apps  # noqa: E402


def reset() -> None:
    harness.STATS.flushdb()
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    opts = parser.parse_args()
    workers = harness.sides("bench.redis_apps")
    results = harness.measure(workers, reset, enqueue, enqueue_bulk, opts.jobs, opts.latency_jobs)
    title = f"Redis, {opts.jobs} no-op jobs; latency over {opts.latency_jobs} jobs sent 10 ms apart"
    harness.print_table(title, results)


if __name__ == "__main__":
    main()
