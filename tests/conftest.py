"""Shared test helpers: service checks that skip on a laptop and fail on CI."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.unit.cli_project import Project

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


#: ``make test`` runs the suite in pytest-xdist workers, scheduled by group: each test module
#: is one group (its module fixtures run once), and modules that share a server resource (a Redis
#: database above, a table prefix, a vhost, a Django test database) are one group, so that two
#: workers never flush or drain each other's jobs. A new module that shares one goes here.
XDIST_GROUPS = {
    "tests/contract/": "contract",
    "tests/django/": "django",
    "tests/integration/test_django_example.py": "django",
    "tests/integration/test_django_recipe.py": "django",
    "tests/testing/": "testing",
    "examples/tests/": "examples",
    "tests/integration/test_liveness.py": "redis-db0",  # liveness and monitor share database 0
    "tests/integration/test_monitor_stores.py": "redis-db0",
    "tests/acceptance/test_cli_doctor.py": "cli",
    "tests/acceptance/test_cli_server.py": "cli",
    "tests/acceptance/test_cli_jobs.py": "jobscli",
    "tests/unit/test_cli_faults.py": "jobscli",
    "tests/integration/test_celery_modes.py": "canvas",
    "tests/integration/test_flask_recipe.py": "canvas",
}


def xdist_group(module: str) -> str:
    """The xdist group of a test module (its path from the project's root)."""
    for start, group in XDIST_GROUPS.items():
        if module.startswith(start):
            return group
    return module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's ``loadfile`` scheduling, with the groups above as its units. (Not ``loadgroup``
    with marks: pytest 9 ignores the node ids xdist 3.8 rewrites for it.)"""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid.split("::", 1)[0])

    return GroupScheduling(config, log)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault suite's table (``tests/faults/conftest.py``): one row per scenario run; *time*
    is the recovery (the first job started after the server came back) or the stop's duration."""
    rows = [
        value
        for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
        if report.when == "call"
        for key, value in report.user_properties
        if key == "fault_row"
    ]
    if not rows:
        return
    terminalreporter.section("fault table")
    terminalreporter.write_line(f"{'scenario':<56} {'kind':<9} {'lost':>4} {'twice':>5} {'time':>9}")
    for scenario, kind, lost, twice, recovery in sorted(rows, key=lambda r: (r[1], r[0])):
        took = f"{recovery:.2f} s" if isinstance(recovery, (int, float)) else "-"
        terminalreporter.write_line(f"{scenario:<56} {kind:<9} {lost:>4} {twice:>5} {took:>9}")


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


def rabbitmq_ready(uri: str, names: list[str]) -> dict[str, int]:
    """Ready messages of these queues (missing ones count 0), read with AMQP passive declares: in
    milliseconds, where ``rabbitmqctl`` starts an Erlang VM (seconds on a loaded machine), so a test
    of a short delay can look before the delay ends."""
    from kombu import Connection

    counts = {}
    with Connection(uri) as conn:
        channel = conn.channel()
        for name in names:
            try:
                counts[name] = channel.queue_declare(name, passive=True).message_count
            except conn.channel_errors:  # a 404 closes the channel
                counts[name] = 0
                channel = conn.channel()
        with contextlib.suppress(Exception):
            channel.close()
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


@pytest.fixture
def project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Project]:
    """A project folder to run ``unified-jobs`` in, in this process (see ``tests/unit/cli_project``)."""
    from tests.unit.cli_project import Project

    p = Project(tmp_path, monkeypatch, capsys)
    yield p
    p.close()
