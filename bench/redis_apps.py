"""The two apps the Redis benchmark compares: plain Celery, and unified_jobs on the same Redis.

Both do the same work per job (one Redis INCR plus a timestamp), so the difference is the
library's own overhead.
"""

from __future__ import annotations

import os

from celery import Celery
from pydantic import BaseModel

from bench.queue_harness import note
from unified_jobs import Config, Jobs, Worker

BROKER = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")


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
    Config.from_dict({"workers": {"mode": "BackgroundQueue"}, "queue": {"kind": "Redis", "uri": BROKER}})
)
jobs.register(Noop)
