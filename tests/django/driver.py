"""Drives the test project as a Django process would, in the config of the environment
(``UJ_DJANGO_CONFIG``, ``UJ_DJANGO_DB``), and prints what happened as one JSON line: the
Django tasks' results once they ended (in a worker, in this process or inline), the capability
flags, and what a rolled-back ``atomic()`` block left. ``tests/django/test_tasks.py`` runs it
next to a real worker and checks every figure."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import timedelta

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django.djproject.settings")
django.setup()

from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from tests.django.orders.jobs import RestockWorker  # noqa: E402
from tests.django.orders.models import Order  # noqa: E402
from tests.django.orders.tasks import add, async_double, attempt_of, decline, send_receipt  # noqa: E402
from unified_jobs.django import compat, get_jobs  # noqa: E402


def summary(result):
    result.refresh()
    out = {"status": str(result.status), "attempts": result.attempts, "queue": result.task.queue_name}
    if result.status == compat.TaskResultStatus.SUCCESSFUL:
        out["value"] = result.return_value
    out["errors"] = [e.exception_class_path for e in result.errors]
    out["finished"] = result.finished_at is not None
    return out


def row_in_transaction() -> int | None:
    """Inside ``atomic()``: is the job's row already in the queue's table, as Django's own
    connection sees it (written in the transaction), or not (it waits for the commit)? The
    block then rolls back. None where the queue is not the project's database."""
    from django.db import connection, transaction

    queue = get_jobs().config.queue
    if queue is None or queue.kind not in ("Sqlite", "Postgres"):
        return None
    with transaction.atomic():
        result = add.enqueue(100, 1)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {queue.table_prefix}jobs WHERE task_id = %s", [result.id])
            (count,) = cursor.fetchone()
        transaction.set_rollback(True)
    return int(count)


def main() -> None:
    call_command("migrate", verbosity=0)
    backend = compat.task_backends["default"]
    report: dict = {
        "api": compat.SOURCE,
        "mode": get_jobs().mode,
        "flags": {
            "defer": backend.supports_defer,
            "async": backend.supports_async_task,
            "get_result": backend.supports_get_result,
            "priority": backend.supports_priority,
        },
    }
    results = {
        "add": add.enqueue(2, 3),
        "context": attempt_of.enqueue("x"),
        "async": async_double.enqueue(21),
        "fails": decline.enqueue(7),
        "aenqueue": asyncio.run(add.aenqueue(4, 4)),
        "other_queue": add.using(queue_name="reports").enqueue(10, 10),
    }
    if backend.supports_defer:
        results["later"] = add.using(run_after=timezone.now() + timedelta(seconds=1.5)).enqueue(1, 1)
        report["later_waits"] = str(results["later"].status)
    client = Client()
    committed = client.post("/orders", data='{"item": "pen"}', content_type="application/json").json()
    rolled_back = client.post(
        "/orders", data='{"item": "ink", "fail": true}', content_type="application/json"
    )
    rolled_back = rolled_back.json()
    results["view"] = send_receipt.get_result(committed["task"])
    report["row_in_transaction"] = row_in_transaction()
    restock = RestockWorker.perform_later({"item": "pen"})
    report["enqueue_errors"] = {}
    for name, call in {
        "not_json": lambda: add.enqueue(object(), 1),
        "int_keys": lambda: add.enqueue({1: 2}, 1),
    }.items():
        try:
            call()
            report["enqueue_errors"][name] = None
        except TypeError as exc:
            report["enqueue_errors"][name] = str(exc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for r in results.values():
            r.refresh()
        if all(r.is_finished for r in results.values()):
            break
        time.sleep(0.1)
    report["results"] = {name: summary(r) for name, r in results.items()}
    report["aget_result"] = str(asyncio.run(add.aget_result(results["add"].id)).status)
    try:
        send_receipt.get_result(rolled_back["task"])
        report["rolled_back"] = "found"
    except compat.TaskResultDoesNotExist:
        report["rolled_back"] = "missing"
    report["orders"] = sorted(Order.objects.values_list("item", "receipt_sent"))
    deadline = time.monotonic() + 10
    while get_jobs().status(restock) != "completed" and time.monotonic() < deadline:
        time.sleep(0.05)
    report["restock"] = get_jobs().status(restock)
    get_jobs().shutdown()
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
