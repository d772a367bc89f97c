"""`make demo`, part 2: the Django example on its SQLite queue, end to end.

Migrates a fresh database, starts `manage.py unified_jobs worker`, places orders through
Django's test client (each order and its receipt job in one transaction; one order is
cancelled, so its job never exists), waits for the receipts with Django's `get_result`, prints
a summary and stops the worker.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
ORDERS = 20


def main() -> int:
    data = Path(tempfile.mkdtemp(prefix="djangoshop-"))
    os.environ["DJANGOSHOP_DATA"] = str(data)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoshop.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client
    from orders.models import Order
    from orders.tasks import send_receipt
    from rich.console import Console
    from rich.table import Table

    from unified_jobs.django import compat, get_jobs

    logging.getLogger("django.request").setLevel(logging.ERROR)  # the cancelled order's 409
    console = Console()
    call_command("migrate", verbosity=0)
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "unified_jobs", "worker", "--concurrency", "2"],
        cwd=HERE,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=open(data / "worker.log", "wb"),  # noqa: SIM115 - closed with the process
    )
    try:
        client = Client()
        started = time.monotonic()
        tasks = []
        for n in range(ORDERS):
            body = {"item": f"teapot #{n}", "email": f"buyer{n}@example.com"}
            tasks.append(client.post("/orders", body, content_type="application/json").json()["task"])
        cancelled = client.post(
            "/orders",
            {"item": "kettle", "email": "x@example.com", "cancel": True},
            content_type="application/json",
        ).json()
        console.print(f"placed {ORDERS} orders (and cancelled one); the worker sends the receipts")
        results = {}
        deadline = time.monotonic() + 90
        while len(results) < ORDERS and time.monotonic() < deadline:
            for task_id in tasks:
                if task_id not in results:
                    result = send_receipt.get_result(task_id)
                    if result.is_finished:
                        results[task_id] = result
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        try:
            send_receipt.get_result(cancelled["task"])
            cancelled_job = "exists (wrong!)"
        except compat.TaskResultDoesNotExist:
            cancelled_job = "never existed"
        ok = sum(r.status == compat.TaskResultStatus.SUCCESSFUL for r in results.values())
        table = Table(title="Django example: Tasks on unified_jobs (SQLite queue in the project's database)")
        table.add_column("what")
        table.add_column("figure", justify="right")
        table.add_row("orders placed", str(Order.objects.count()))
        table.add_row("receipts sent (task SUCCESSFUL)", f"{ok}/{ORDERS}")
        table.add_row("orders marked receipt_sent", str(Order.objects.filter(receipt_sent=True).count()))
        table.add_row("fraud scores (async task)", str(Order.objects.exclude(fraud_score=None).count()))
        table.add_row("cancelled order's receipt job", cancelled_job)
        table.add_row("seconds", f"{elapsed:.1f}")
        console.print(table)
        if ok != ORDERS or cancelled_job != "never existed":
            console.print(f"[red]not every receipt was sent; see {data / 'worker.log'}[/red]")
            return 1
        return 0
    finally:
        worker.terminate()
        worker.wait(30)
        get_jobs().shutdown()
        if worker.returncode in (0, -15):
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
