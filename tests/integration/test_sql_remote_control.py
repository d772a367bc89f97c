"""Remote control on the SQL kinds: ``celery inspect``/``control`` and Flower against a real
``unified-jobs start --worker``, on PostgreSQL and SQLite (``unified_jobs/adapters/sql/broadcast.py``).

One worker per backend for the whole module; every ``celery`` command is a real subprocess with
the default 1 s reply timeout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import PG_HOST, PG_PORT, PG_URL, clear_sql_jobs, require_service, sql_prefix
from tests.contract.contract_app import Echo, LongAsync, create_app
from tests.flower import CONTRACT_CELERY, start_flower
from tests.integration.conftest_sql import wait_for
from tests.procs import BIN, ROOT, WorkerProcess, read_records, unified_jobs_worker, wait_until
from unified_jobs import Jobs
from unified_jobs.adapters.sql.broadcast import ControlSpec, control_spec
from unified_jobs.adapters.sql.engine import get_engine
from unified_jobs.adapters.sql.schema import tables_for

pytestmark = pytest.mark.timeout(120)

PREFIX = sql_prefix("remote")
TABLES = tables_for(PREFIX)
KINDS = [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"]
#: A consumer that died long ago: its binding expired, its messages are older than any grace.
DEAD_QUEUE = "dead-worker@nowhere.celery.pidbox"
ORPHAN_QUEUE = "gone-client.reply.celery.pidbox"


@dataclass
class Node:
    """One backend's queue, the worker consuming it, and a producer app in this process."""

    kind: str
    uri: str
    env: dict[str, str]
    record: Path
    jobs: Jobs
    worker: WorkerProcess
    #: The worker's node name up to its host: "rc-<kind>@".
    name: str

    def celery(self, *args: str, check: bool = True) -> str:
        """``celery -A <the contract app> ARGS`` in a subprocess; its stdout (and stderr)."""
        result = subprocess.run(
            [str(BIN / "celery"), "-A", CONTRACT_CELERY, *args],
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = result.stdout + result.stderr
        if check:
            assert result.returncode == 0, f"celery {' '.join(args)} exited {result.returncode}:\n{out}"
        return out

    def replied(self, out: str, text: str) -> bool:
        """Whether ``celery inspect/control`` output has this worker's OK reply, saying ``text``."""
        reply = re.search(rf"->\s+{re.escape(self.name)}\S*: OK\n(.*?)(?:\n->|\Z)", out, re.S)
        return reply is not None and text in reply.group(1)

    def rows(self, table: sa.Table) -> list[Any]:
        with get_engine(self.uri).begin() as conn:
            return list(conn.execute(sa.select(table)).all())


def _seed_dead_consumer(uri: str) -> None:
    """Rows a consumer that died long ago leaves: an expired binding with a message, and a
    message of a queue nobody binds. The worker's sweep must remove them."""
    long_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    with get_engine(uri).begin() as conn:
        conn.execute(sa.delete(TABLES.bindings))
        conn.execute(sa.delete(TABLES.control))
        conn.execute(
            sa.insert(TABLES.bindings).values(
                exchange="celery.pidbox",
                routing_key="",
                queue=DEAD_QUEUE,
                pattern=None,
                control=True,
                message_ttl=None,
                expires_at=long_ago,
                updated_at=long_ago,
            )
        )
        for queue in (DEAD_QUEUE, ORPHAN_QUEUE):
            row = {"queue": queue, "payload": "{}", "created_at": long_ago, "expires_at": None}
            conn.execute(sa.insert(TABLES.control).values(**row))


@pytest.fixture(scope="module", params=KINDS)
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    kind: str = request.param
    tmp = tmp_path_factory.mktemp(f"remote-{kind}")
    if kind == "postgres":
        require_service("PostgreSQL", PG_HOST, PG_PORT)
        uri = PG_URL
    else:
        uri = f"sqlite:///{tmp}/jobs.db"
    clear_sql_jobs(uri, PREFIX)  # creates the tables too
    _seed_dead_consumer(uri)
    queue = {"kind": "Postgres" if kind == "postgres" else "Sqlite", "uri": uri, "table_prefix": PREFIX}
    # A short lease: the heartbeat (which sweeps control rows) runs every second.
    config = {"workers": {"mode": "BackgroundQueue"}, "queue": {**queue, "lease_sec": 3}}
    record = tmp / "record.jsonl"
    env = {"UJ_CONTRACT_CONFIG": json.dumps(config), "UJ_CONTRACT_RECORD": str(record)}
    jobs = create_app(config, str(record))
    name = f"rc-{kind}@"
    worker = unified_jobs_worker(
        "tests.contract.contract_app:app_from_env",
        env,
        tmp / "worker.log",
        *("--concurrency", "2", "--hostname", f"{name}%h"),
        *("--", "--without-mingle", "--without-gossip", "--task-events"),
    )
    try:
        worker.wait_for_output("ready.")
        yield Node(kind, uri, env, record, jobs, worker, name)
    finally:
        worker.stop()
        jobs.shutdown()


def test_only_auto_delete_and_exclusive_queues_are_control_queues() -> None:
    # Celery's pidbox queue: auto-delete, exclusive, x-expires 10 s, x-message-ttl 300 s.
    pidbox = {
        "auto_delete": True,
        "exclusive": True,
        "arguments": {"x-expires": 10000, "x-message-ttl": 300000},
    }
    assert control_spec(pidbox) == ControlSpec(message_ttl=300.0, expires=10.0)
    assert control_spec({"exclusive": True, "arguments": None}) == ControlSpec()
    # Job queues, however declared: durable or not, expiring or not.
    assert control_spec({"durable": True, "auto_delete": False, "arguments": {"x-expires": 60000}}) is None
    assert control_spec({"durable": False}) is None


def _started(node: Node, job_id: str) -> bool:
    starts = ("sleep_start", "long_start")  # Sleep's, LongAsync's
    return any(r["worker"] in starts and r["job"] == job_id for r in read_records(node.record))


def test_celery_inspect_answers_within_its_default_timeout(node: Node) -> None:
    # Running until cancelled below: four `celery` processes starting on a loaded machine took
    # longer than a 6 s job once, and `inspect active` then rightly found nothing running.
    running = LongAsync.perform_later({"n": 1, "seconds": 120})
    assert wait_until(lambda: _started(node, running.id), timeout=20), node.worker.output()[-3000:]

    methods = ("ping", "registered", "stats", "active")
    try:
        with ThreadPoolExecutor(len(methods)) as pool:
            out = dict(zip(methods, pool.map(lambda m: node.celery("inspect", m), methods), strict=True))
    finally:
        assert node.jobs.cancel(running)
        ended = lambda: node.jobs.status(running) == "cancelled"  # noqa: E731
        assert wait_until(ended, timeout=20), node.jobs.job(running)

    assert node.replied(out["ping"], "pong"), out["ping"]
    for task in ("contract.Echo", "contract.Sleep", "contract.LongAsync"):
        assert node.replied(out["registered"], task), out["registered"]
    assert node.replied(out["stats"], '"max-concurrency": 2'), out["stats"]
    assert node.replied(out["stats"], '"transport": "ujsql"'), out["stats"]
    # The running job, by its id and task name.
    assert node.replied(out["active"], running.id), out["active"]
    assert node.replied(out["active"], "contract.LongAsync"), out["active"]

    # Requests, replies and events never became jobs: the jobs table holds only jobs.
    jobs = node.rows(TABLES.jobs)
    assert running.id in {r.task_id for r in jobs}
    assert {r.queue for r in jobs} <= {"default", f"rc_extra_{node.kind}"}, jobs
    assert all(r.task_name.startswith("contract.") for r in jobs), jobs
    # Each command's reply queue went with it (bindings and messages): nothing piles up.
    bindings = node.rows(TABLES.bindings)
    assert not [b for b in bindings if b.exchange == "reply.celery.pidbox"], bindings
    replies = [m for m in node.rows(TABLES.control) if m.queue.endswith(".reply.celery.pidbox")]
    assert not [m for m in replies if m.queue != ORPHAN_QUEUE], replies
    (pidbox,) = [b for b in bindings if b.exchange == "celery.pidbox" and b.queue.startswith(node.name)]
    assert pidbox.control and pidbox.expires_at is not None


def test_celery_control_add_consumer_makes_the_worker_take_a_new_queue(node: Node) -> None:
    queue = f"rc_extra_{node.kind}"
    added = node.celery("control", "add_consumer", queue)
    assert node.replied(added, f"add consumer {queue}"), added

    handle = Echo.perform_later({"n": 7}, queue=queue)
    ran = lambda: any(r["job"] == handle.id for r in read_records(node.record))  # noqa: E731
    assert wait_until(ran, timeout=15), node.worker.output()[-3000:]

    cancelled = node.celery("control", "cancel_consumer", queue)
    assert node.replied(cancelled, f"no longer consuming from {queue}"), cancelled


def test_a_dead_consumers_bindings_and_messages_are_swept(node: Node) -> None:
    def swept() -> bool:
        queues = {m.queue for m in node.rows(TABLES.control)}
        bound = {b.queue for b in node.rows(TABLES.bindings)}
        return DEAD_QUEUE not in bound and not {DEAD_QUEUE, ORPHAN_QUEUE} & queues

    assert wait_until(swept, timeout=20), (node.rows(TABLES.bindings), node.rows(TABLES.control))
    # The live worker's own binding is kept, renewed well into the future.
    (pidbox,) = [b for b in node.rows(TABLES.bindings) if b.queue.startswith(node.name)]
    expires_at = pidbox.expires_at.replace(tzinfo=pidbox.expires_at.tzinfo or timezone.utc)
    assert expires_at > datetime.now(timezone.utc) + timedelta(seconds=15)


@pytest.mark.parametrize("node", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_flower_lists_the_worker_and_a_task_that_ran(node: Node, tmp_path: Path) -> None:
    flower = start_flower(CONTRACT_CELERY, node.env, tmp_path / "flower.log")
    try:
        flower.wait_ready()

        # Flower hears the worker's heartbeat events: from then on it hears its task events.
        def alive() -> Any:
            status = flower.get_json("/api/workers?status=1")
            return [w for w, up in status.items() if w.startswith(node.name) and up]

        assert wait_until(alive, timeout=20), flower.output()[-3000:]
        handle = Echo.perform_later({"n": 42})

        def succeeded() -> Any:
            task = flower.get_json("/api/tasks").get(handle.id)
            return task is not None and task["state"] == "SUCCESS"

        assert wait_until(succeeded, timeout=20, interval=0.2), flower.get_json("/api/tasks")
        task = flower.get_json("/api/tasks")[handle.id]
        assert task["name"] == "contract.Echo" and task["worker"].startswith(node.name), task

        # Flower asks the workers with `inspect` (stats, registered, ...).
        def inspected() -> Any:
            found = flower.get_json("/api/workers?refresh=1")
            return [info for w, info in found.items() if w.startswith(node.name) and "registered" in info]

        (info,) = wait_for(inspected, 15, "Flower's inspect of the worker")
        assert "contract.Echo" in info["registered"], info
        assert info["stats"]["pool"]["max-concurrency"] == 2, info["stats"]
    finally:
        flower.stop()
