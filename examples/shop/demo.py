"""`make demo`: enqueue a few thousand jobs, show progress, print a summary.

On the default config the jobs go to the SQLite queue and a worker process (started here,
`unified-jobs start --worker`) runs them; with SHOP_WORKERS_MODE=BackgroundAsync they run on
the in-process pool.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shop.app import create_app
from shop.context import ShopContext
from shop.workers import BookRevenue, MakeThumbnails, SendReceipt

EXAMPLES = Path(__file__).resolve().parent.parent


def place_orders(n: int, on_progress: Callable[[int], None]) -> None:
    for order_id in range(n):
        SendReceipt.perform_later({"order_id": order_id, "email": f"buyer{order_id}@example.com"})
        MakeThumbnails.perform_later({"image_url": f"https://img.example.com/{order_id}.png"})
        BookRevenue.perform_later({"order_id": order_id, "subtotal_cents": 1000 + order_id})
        if order_id % 50 == 49 or order_id == n - 1:
            on_progress((order_id + 1) * 3)


def start_worker(env: dict[str, str], concurrency: int) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "unified_jobs",
        "--app",
        "shop.app:create_app",
        "start",
        "--worker",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "WARNING",
        "--",
        "--without-mingle",
        "--without-gossip",
    ]
    # The worker's banner would scroll the progress bars away; its warnings still show (stderr).
    return subprocess.Popen(argv, cwd=EXAMPLES, env=env, start_new_session=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=1000, help="orders to place (3 jobs each)")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    opts = parser.parse_args()
    console = Console()
    folder = Path(tempfile.mkdtemp(prefix="unified-jobs-demo-"))
    os.environ.setdefault("SHOP_QUEUE_URI", f"sqlite:///{folder}/shop-jobs.db")
    ctx = ShopContext()
    jobs = create_app(context=ctx)
    queue = jobs.config.queue
    on_queue = jobs.mode == "BackgroundQueue" and queue is not None
    where = f"{queue.kind} queue at {queue.uri}" if on_queue and queue else "in-process pool"
    console.print(
        f"[bold]unified_jobs demo[/]: mode [cyan]{jobs.mode}[/] ({where}), {len(jobs.workers)} workers"
    )
    expected = opts.orders * 3
    worker = start_worker(dict(os.environ), jobs.config.workers.concurrency) if on_queue else None

    def ran() -> dict[str, int]:
        """Jobs finished, by queue: from the queue's table, or from the in-process context."""
        if on_queue and queue is not None:
            from unified_jobs.adapters.sql import job_counts

            counts = job_counts(queue.uri, queue.table_prefix)
            return {q: by_status.get("completed", 0) for q, by_status in counts.items()}
        return dict(ctx.done)

    start = time.perf_counter()
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            enqueued = progress.add_task("enqueued", total=expected)
            done = progress.add_task("ran     ", total=expected)
            place_orders(opts.orders, lambda n: progress.update(enqueued, completed=n))
            enqueue_s = time.perf_counter() - start
            deadline = time.monotonic() + opts.timeout
            while (total := sum(ran().values())) < expected and time.monotonic() < deadline:
                progress.update(done, completed=total)
                time.sleep(0.1)
            progress.update(done, completed=total)
        elapsed = time.perf_counter() - start
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)  # warm shutdown: the main process stops its pool
            worker.wait(30)
        jobs.shutdown(wait=True, timeout=10)
    counts = ran()
    shutil.rmtree(folder, ignore_errors=True)

    table = Table(title="summary")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("mode", jobs.mode + (f" ({queue.kind})" if on_queue and queue else ""))
    for name, n in sorted(counts.items()):
        table.add_row(f"{name} jobs run", str(n))
    table.add_row("jobs run / enqueued", f"{total} / {expected}")
    table.add_row("enqueue rate", f"{expected / enqueue_s:,.0f} jobs/s")
    table.add_row("throughput (first enqueue to last job)", f"{total / elapsed:,.0f} jobs/s")
    console.print(table)
    if total != expected:
        console.print(f"[red]only {total} of {expected} jobs ran[/]")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
