"""`make demo`: enqueue a few thousand jobs, show progress, print a summary."""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shop.app import create_app
from shop.context import ShopContext
from shop.workers import BookRevenue, MakeThumbnails, SendReceipt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=1000, help="orders to place (3 jobs each)")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    opts = parser.parse_args()

    console = Console()
    ctx = ShopContext()
    jobs = create_app(context=ctx)
    console.print(f"[bold]unified_jobs demo[/]: mode [cyan]{jobs.mode}[/], {len(jobs.workers)} workers")
    expected = opts.orders * 3

    start = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        enqueued = progress.add_task("enqueued", total=expected)
        ran = progress.add_task("ran     ", total=expected)
        for order_id in range(opts.orders):
            SendReceipt.perform_later({"order_id": order_id, "email": f"buyer{order_id}@example.com"})
            MakeThumbnails.perform_later({"image_url": f"https://img.example.com/{order_id}.png"})
            BookRevenue.perform_later({"order_id": order_id, "subtotal_cents": 1000 + order_id})
            progress.update(enqueued, completed=(order_id + 1) * 3)
            progress.update(ran, completed=ctx.total_done)
        enqueue_s = time.perf_counter() - start
        deadline = time.monotonic() + opts.timeout
        while ctx.total_done < expected and time.monotonic() < deadline:
            progress.update(ran, completed=ctx.total_done)
            time.sleep(0.05)
        progress.update(ran, completed=ctx.total_done)
    elapsed = time.perf_counter() - start
    jobs.shutdown(wait=True, timeout=10)

    table = Table(title="summary")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("mode", jobs.mode)
    for kind, n in sorted(ctx.done.items()):
        table.add_row(f"{kind} jobs run", str(n))
    table.add_row("jobs run / enqueued", f"{ctx.total_done} / {expected}")
    table.add_row("enqueue rate", f"{expected / enqueue_s:,.0f} jobs/s")
    table.add_row("throughput (enqueue to last job)", f"{ctx.total_done / elapsed:,.0f} jobs/s")
    table.add_row("revenue booked", f"${ctx.revenue_cents / 100:,.2f}")
    console.print(table)
    if ctx.total_done != expected:
        console.print(f"[red]only {ctx.total_done} of {expected} jobs ran[/]")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
