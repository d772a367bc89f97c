"""BackgroundAsync throughput: N no-op jobs through the in-process pool, sync and async
``perform``, against a bare ``ThreadPoolExecutor`` and bare ``asyncio`` tasks in the same run.

    .venv/bin/python bench/bench_inprocess.py [N]      (default 20,000)

Each figure is jobs/s from the first enqueue to the last job done, best of 3 runs; the runs of
the pool and of its baseline alternate, so that a change in the machine's load meanwhile
weighs on both alike. The pool is what a user gets: validation and a JSON round trip at
enqueue, the executor, the job store.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel

from unified_jobs import Config, Jobs, Worker

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
CONCURRENCY = 4


class NoArgs(BaseModel):
    n: int


class Counter:
    def __init__(self, total: int) -> None:
        self.left = total
        self.lock = threading.Lock()
        self.done = threading.Event()

    def hit(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                self.done.set()


counter = Counter(0)


class SyncNoop(Worker[NoArgs]):
    name = "bench.SyncNoop"

    def perform(self, args: NoArgs) -> None:
        counter.hit()


class AsyncNoop(Worker[NoArgs]):
    name = "bench.AsyncNoop"

    async def perform(self, args: NoArgs) -> None:
        counter.hit()


def best_of_both(ours: Callable[[], float], bare: Callable[[], float]) -> tuple[float, float]:
    """Best of 3 runs of each, alternating."""
    runs = [(ours(), bare()) for _ in range(3)]
    return max(r[0] for r in runs), max(r[1] for r in runs)


def pool_rate(worker: type[Worker[NoArgs]]) -> float:
    global counter
    jobs = Jobs(Config.from_dict({"workers": {"mode": "BackgroundAsync", "concurrency": CONCURRENCY}}))
    jobs.register(worker)
    counter = Counter(N)
    start = time.perf_counter()
    for i in range(N):
        worker.perform_later({"n": i})
    counter.done.wait(120)
    elapsed = time.perf_counter() - start
    jobs.shutdown()
    return N / elapsed


def bare_threads() -> float:
    global counter
    counter = Counter(N)
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        start = time.perf_counter()
        for _ in range(N):
            pool.submit(counter.hit)
        counter.done.wait(120)
        elapsed = time.perf_counter() - start
    return N / elapsed


def bare_asyncio() -> float:
    global counter
    counter = Counter(N)

    async def noop() -> None:
        counter.hit()

    async def main() -> float:
        start = time.perf_counter()
        tasks = [asyncio.create_task(noop()) for _ in range(N)]
        await asyncio.gather(*tasks)
        return time.perf_counter() - start

    return N / asyncio.run(main())


def main() -> None:
    sync_pool, threads = best_of_both(lambda: pool_rate(SyncNoop), bare_threads)
    async_pool, loop = best_of_both(lambda: pool_rate(AsyncNoop), bare_asyncio)
    print(f"BackgroundAsync, {N:,} no-op jobs, concurrency {CONCURRENCY} (jobs/s, best of 3)")
    for label, ours, bare, what in (
        ("sync perform ", sync_pool, threads, "bare ThreadPoolExecutor"),
        ("async perform", async_pool, loop, "bare asyncio tasks     "),
    ):
        print(f"  {label}: {ours:>9,.0f}   {what} {bare:>9,.0f}   ratio {bare / ours:.2f}x")


if __name__ == "__main__":
    main()
