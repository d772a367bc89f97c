"""Shared test helpers: service checks that skip on a laptop and fail on CI."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess

import pytest

IN_CI = bool(os.environ.get("CI"))
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_HOST, PG_PORT = "127.0.0.1", 5432
RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672


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
    "canvas_store": 3,
    # the job stores of the RabbitMQ kind (queue.store_uri)
    "rabbitmq": 6,
    "rabbitmq_contract": 7,
    # tests/integration/test_scheduler.py: the Redis queue, and the RabbitMQ kind's job store
    "scheduler": 1,
    "scheduler_rabbitmq": 8,
    "redis_delays": 2,
    # tests/integration/test_liveness.py: heartbeats and doctor --workers
    "liveness": 0,
    # tests/integration/test_monitor_stores.py: the dashboard's reads of the Redis job store
    "monitor": 0,
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
        conn.execute(sa.text(f"DELETE FROM {prefix}schedules"))


def require_rabbitmq() -> None:
    """RabbitMQ answers, and ``rabbitmqctl`` is here to make the tests' private vhosts."""
    require_service("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    if shutil.which("rabbitmqctl") is None:
        reason = "rabbitmqctl is not on PATH (the RabbitMQ tests make a private vhost with it)"
        if IN_CI:
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
        pytest.skip(reason)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def make_rabbitmq_vhost(purpose: str) -> str:
    """A new, empty vhost for one test session (``ujt_<purpose>_<pid>``); returns its URI.
    Each RabbitMQ test module has its own, so their workers never share queues."""
    name = f"ujt_{purpose}_{os.getpid()}"
    if _vhost_exists(name):  # left by a run that was killed
        _rabbitmqctl("delete_vhost", name)
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{name}"


def drop_rabbitmq_vhost(uri: str) -> None:
    _rabbitmqctl("delete_vhost", uri.rsplit("/", 1)[1])


def _vhost_exists(name: str) -> bool:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_vhosts", "name"], capture_output=True, text=True, timeout=60, check=True
    )
    return name in out.stdout.split()


def rabbitmq_counts(uri: str) -> dict[str, tuple[int, int]]:
    """(ready, unacked) messages of every queue of the URI's vhost, as the broker counts them."""
    vhost = uri.rsplit("/", 1)[1]
    columns = ("name", "messages_ready", "messages_unacknowledged")
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, *columns],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    counts = {}
    for line in out.stdout.splitlines()[1:]:
        name, ready, unacked = line.split("\t")
        counts[name] = (int(ready), int(unacked))
    return counts


def purge_rabbitmq_queues(uri: str, names: list[str]) -> None:
    """Empty these queues of the vhost (and its delay queues); missing queues are fine."""
    from kombu import Connection

    from unified_jobs.adapters.celery.kinds.rabbitmq import LEVELS, level_name

    with Connection(uri) as conn:
        for name in [*names, *(level_name(level) for level in range(LEVELS))]:
            channel = conn.channel()
            with contextlib.suppress(*conn.channel_errors):
                channel.queue_purge(name)
            with contextlib.suppress(Exception):  # a 404 closed it
                channel.close()
