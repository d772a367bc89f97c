"""A plain Celery app on the SQL transport, for worker subprocesses in the SQL queue tests.

Configured from the environment:

- ``UJ_SQL_BROKER``: the broker URL (``ujsql+postgresql://...`` or ``ujsql+sqlite:///...``)
- ``UJ_SQL_RESULTS``: a file; tasks append one line per event so tests can count across processes
- ``UJ_SQL_OPTIONS``: JSON of the transport options (e.g. ``{"lease_sec": 2, "table_prefix": ...}``)
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

import unified_jobs.adapters.sql  # noqa: F401  (registers the ujsql transport)


def make_app(broker: str, transport_options: dict[str, Any]) -> Celery:
    """The app's configuration; tests build producers with it too (``send_task`` by name)."""
    celery = Celery("sql_celery_app", broker=broker)
    celery.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # A job is acked after it ran, and requeued if its pool process dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # How long Celery waits for a dead pool process's result before rejecting (default 10 s).
        worker_lost_wait=2.0,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return celery


app = make_app(
    os.environ.get("UJ_SQL_BROKER", "ujsql+sqlite:///uj-test-jobs.db"),
    json.loads(os.environ.get("UJ_SQL_OPTIONS", "{}")),
)


def _log(*fields: object) -> None:
    # One os.write of a short line with O_APPEND is atomic across processes.
    line = " ".join(str(f) for f in fields) + "\n"
    fd = os.open(os.environ["UJ_SQL_RESULTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task(name="sqlt.record")
def record(job: str, sleep: float = 0.0) -> None:
    """Log ``start``, sleep, log ``done``: a job counts as completed once its ``done`` is logged."""
    _log("start", job, os.getpid(), f"{time.time():.6f}")
    if sleep:
        time.sleep(sleep)
    _log("done", job, os.getpid(), f"{time.time():.6f}")


@app.task(name="sqlt.noop")
def noop(job: str) -> None:
    _log("done", job, os.getpid(), f"{time.time():.6f}")
