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
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import queue_harness as harness  # noqa: E402
from bench.queue_harness import Noop, plain_app  # noqa: E402
from unified_jobs import Config, Jobs  # noqa: E402

BROKER = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
STORE = os.environ.get("BENCH_STORE_URL", "redis://127.0.0.1:6379/4")


plain, plain_noop = plain_app(BROKER)

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


def reset() -> None:
    harness.STATS.flushdb()
    redis.Redis.from_url(STORE).flushdb()
    with plain.connection_for_write() as conn:
        for queue in ("bench-plain", "bench-uj"):
            channel = conn.channel()
            with contextlib.suppress(*conn.channel_errors):  # not declared yet
                channel.queue_purge(queue)
            with contextlib.suppress(Exception):  # a 404 closed it
                channel.close()


def enqueue_unconfirmed(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        UnconfirmedNoop.perform_later({"sent": time.time()})
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    opts = parser.parse_args()
    workers = harness.sides("bench.bench_rabbitmq_queue")
    enqueue, enqueue_bulk = harness.enqueuer(plain_noop, Noop), harness.bulk_enqueuer(plain_noop, Noop)
    results = harness.measure(workers, reset, enqueue, enqueue_bulk, opts.jobs, opts.latency_jobs)
    unconfirmed_rate = enqueue_unconfirmed(opts.jobs)
    reset()
    title = f"RabbitMQ, {opts.jobs} no-op jobs; latency over {opts.latency_jobs} jobs sent 10 ms apart"
    harness.print_table(title, results, {"enqueue, confirm_publish: false": unconfirmed_rate})


if __name__ == "__main__":
    main()
