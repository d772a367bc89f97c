"""Shared test helpers: service checks that skip on a laptop and fail on CI."""

from __future__ import annotations

import os
import socket

import pytest

IN_CI = bool(os.environ.get("CI"))
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_HOST, PG_PORT = "127.0.0.1", 5432


def service_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (laptop) or fail (CI is set) when a service does not answer."""
    if service_up(host, port):
        return
    reason = f"{name} is not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(f"{reason}; start it to run this test")


#: Redis database numbers, one per test module that runs real workers, so that a worker of one
#: module never takes another module's jobs. Each is flushed by the tests that use it.
REDIS_DBS = {
    "contract": 13,
    "redis": 12,
    "dropin": 11,
    "cli": 10,
    "testing": 14,
    "examples": 15,
    "jobscli": 9,
    # an adopted app's broker and result backend in the modes without a queue
    "canvas_broker": 4,
    "canvas_results": 5,
}


def redis_url(purpose: str) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DBS[purpose]}"


def flush_redis_db(purpose: str) -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DBS[purpose])
    client.flushdb()
    client.close()


PG_URL = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"


def sql_prefix(purpose: str) -> str:
    """A table prefix per test module (like REDIS_DBS), so their workers never share jobs."""
    return f"ujt_{purpose}_"


def clear_sql_jobs(uri: str, prefix: str) -> None:
    """Create the queue's tables if needed and delete every job in them."""
    import sqlalchemy as sa

    from unified_jobs.adapters.sql import ensure_schema
    from unified_jobs.adapters.sql.engine import get_engine

    ensure_schema(uri, prefix)
    with get_engine(uri).begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {prefix}jobs"))
