"""unified_jobs on the backend of ``BENCH_BACKEND`` (queue kind Redis, Postgres or Sqlite), with
the harness's no-op ``Worker`` (``bench.uj_noop`` on the queue bench-uj)."""

from __future__ import annotations

from typing import Any

from bench.peers import settings
from bench.queue_harness import Noop
from unified_jobs import Config, Jobs


def queue() -> dict[str, Any]:
    kind = settings.backend()
    if kind == "redis":
        return {"kind": "Redis", "uri": settings.redis_url()}
    if kind == "postgres":
        return {"kind": "Postgres", "uri": settings.pg_url()}
    return {"kind": "Sqlite", "uri": f"sqlite:///{settings.sqlite_path()}"}


jobs = Jobs(Config.from_dict({"workers": {"mode": "BackgroundQueue"}, "queue": queue()}))
jobs.register(Noop)
