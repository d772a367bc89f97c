"""The two apps the Redis benchmark compares: plain Celery, and unified_jobs on the same Redis.

Both do the same work per job (one Redis INCR plus a timestamp), so the difference is the
library's own overhead.
"""

from __future__ import annotations

import os

from bench.queue_harness import Noop, plain_app
from unified_jobs import Config, Jobs

BROKER = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")

plain, plain_noop = plain_app(BROKER)

jobs = Jobs(
    Config.from_dict({"workers": {"mode": "BackgroundQueue"}, "queue": {"kind": "Redis", "uri": BROKER}})
)
jobs.register(Noop)
