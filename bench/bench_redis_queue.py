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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import queue_harness as harness  # noqa: E402
from bench import redis_apps  # noqa: E402


def reset() -> None:
    harness.STATS.flushdb()
    redis_apps.jobs.celery.connection_for_write().default_channel.client.flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    opts = parser.parse_args()
    workers = harness.sides("bench.redis_apps")
    task, worker = redis_apps.plain_noop, redis_apps.Noop
    enqueue, enqueue_bulk = harness.enqueuer(task, worker), harness.bulk_enqueuer(task, worker)
    results = harness.measure(workers, reset, enqueue, enqueue_bulk, opts.jobs, opts.latency_jobs)
    title = f"Redis, {opts.jobs} no-op jobs; latency over {opts.latency_jobs} jobs sent 10 ms apart"
    harness.print_table(title, results)


if __name__ == "__main__":
    main()
