"""The benchmark's configuration, from the environment ``bench_peers`` sets for each system, so
that the enqueuing process and the worker subprocesses it starts see the same values.

- ``BENCH_BACKEND``: redis, postgres or sqlite (the backend being measured);
- ``BENCH_REDIS_URL``: the private Redis database of the queues;
- ``BENCH_STATS_URL``: the private Redis database of the jobs' bookkeeping (``note``);
- ``BENCH_PG_URL``: the benchmark's own Postgres database (``postgresql://...``);
- ``BENCH_SQLITE_PATH``: the SQLite file of the system being measured.
"""

from __future__ import annotations

import os


def backend() -> str:
    return os.environ.get("BENCH_BACKEND", "redis")


def redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")


def pg_url() -> str:
    return os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/uj_bench")


def sqlite_path() -> str:
    return os.environ.get("BENCH_SQLITE_PATH", "/tmp/uj_bench.db")


def pg_url_for(driver: str) -> str:
    """``BENCH_PG_URL`` with a driver scheme (``postgresql+psycopg``, ``psycopg3``)."""
    return driver + pg_url().removeprefix("postgresql")
