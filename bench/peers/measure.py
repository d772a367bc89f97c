"""Every figure of one system on the backend of ``BENCH_BACKEND``, measured in this process
(``bench_peers`` runs one of these per system, so that no two systems' libraries share the
enqueuing process), written as JSON to ``--out``:

    python -m bench.peers.measure SYSTEM --jobs N --latency-jobs M --out FILE --logs DIR

The figures are those of ``bench.queue_harness`` (``measure``, ``drain``, ``latency``), with the
harness's ``note`` as every job's bookkeeping: enqueue jobs/s (one job per call), bulk enqueue
jobs/s (1000 a call, where the system has a bulk API), drain jobs/s (N jobs queued, then the
worker started: first job to last), and enqueue-to-start latency p50/p99 of jobs sent 10 ms apart
to an idle worker. Before the latency jobs, the worker runs one warm-up job (then idles 1 s), so
that a worker slower to start than the harness's 4 s still finds every job idle and ready.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import queue_harness as harness  # noqa: E402
from bench.peers import drivers, settings  # noqa: E402

BULK_CHUNK = 1000
STALL_SEC = 45.0


class WorkerDied(RuntimeError):
    pass


class Workers:
    """The worker processes of one figure, each in its own session, logging to ``logs``."""

    def __init__(self, argvs: list[list[str]], logs: Path, label: str) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for i, argv in enumerate(argvs):
            log = logs / f"{label}-{i}.log"
            self.logs.append(log)
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            self.procs.append(proc)

    def check(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise WorkerDied(f"worker {proc.args[0]} exited ({proc.returncode}):\n{tail}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to each process group, then SIGKILL to those that linger."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):  # the group too: children left behind
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def done() -> int:
    return int(harness.STATS.get("done") or 0)


def wait_done(n: int, workers: Workers | None, timeout: float = 600.0) -> int:
    """Until ``n`` jobs ran, or none ran for ``STALL_SEC`` (or ``timeout``): how many ran."""
    deadline = time.monotonic() + timeout
    last, progress = -1, time.monotonic()
    while True:
        count = done()
        if count >= n:
            return count
        now = time.monotonic()
        if count != last:
            last, progress = count, now
        if now - progress > STALL_SEC or now > deadline:
            return count
        if workers is not None:
            workers.check()
        time.sleep(0.02)


def reset(driver: drivers.Driver) -> None:
    driver.clean()
    harness.STATS.flushdb()


def rate(n: int, seconds: float) -> float:
    return n / seconds


#: Jobs sent (and thrown away) before a rate is timed: the first calls of a process pay for its
#: connections, script loads and lazy imports, which a steady producer does not.
WARM_UP = 50


def enqueue_rate(driver: drivers.Driver, n: int) -> float:
    reset(driver)
    driver.send(WARM_UP)
    reset(driver)
    start = time.perf_counter()
    driver.send(n)
    return rate(n, time.perf_counter() - start)


def bulk_rate(driver: drivers.Driver, n: int) -> float:
    reset(driver)
    driver.send_bulk([time.time()] * WARM_UP)
    reset(driver)
    start = time.perf_counter()
    for first in range(0, n, BULK_CHUNK):
        size = min(BULK_CHUNK, n - first)
        driver.send_bulk([time.time()] * size)
    return rate(n, time.perf_counter() - start)


def drain(driver: drivers.Driver, n: int, logs: Path, notes: list[str]) -> float | None:
    reset(driver)
    driver.send(n)
    workers = Workers(driver.workers(), logs, f"{driver.name}-drain")
    try:
        ran = wait_done(n, workers)
        time.sleep(0.5)  # a job delivered twice would show now
        ran = done()
    finally:
        workers.stop()
    if ran < n:
        notes.append(f"drain: only {ran} of {n} jobs ran (none for {STALL_SEC:.0f}s)")
        return None
    if ran > n:
        notes.append(f"drain: {ran} runs for {n} jobs (some ran twice)")
    first, last = float(harness.STATS.get("first") or 0), float(harness.STATS.get("last") or 0)
    return rate(n, last - first)


def latency(driver: drivers.Driver, n: int, logs: Path, notes: list[str]) -> tuple[float, float] | None:
    reset(driver)
    workers = Workers(driver.workers(), logs, f"{driver.name}-latency")
    try:
        time.sleep(4)  # let it connect and go idle, as the harness does
        driver.send(1)  # the warm-up job
        if wait_done(1, workers, timeout=60) < 1:
            notes.append("latency: the warm-up job did not run")
            return None
        time.sleep(1)
        harness.STATS.flushdb()
        driver.send(n, gap=0.01)
        ran = wait_done(n, workers)
    finally:
        workers.stop()
    if ran < n:
        notes.append(f"latency: only {ran} of {n} jobs ran")
        return None
    samples = sorted(float(x) * 1000 for x in harness.STATS.lrange("latency", 0, -1))
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def rss_mb(workers: Workers) -> float:
    """The resident memory of every process of the workers' sessions (each started its own)."""
    sessions = {proc.pid for proc in workers.procs}
    total_kb = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # after "pid (comm)": state ppid pgrp session ...
            if int(stat.rsplit(")", 1)[1].split()[3]) not in sessions:
                continue
            status = (entry / "status").read_text()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        line = next((ln for ln in status.splitlines() if ln.startswith("VmRSS:")), None)
        total_kb += int(line.split()[1]) if line else 0
    return total_kb / 1024


def memory(driver: drivers.Driver, n: int, logs: Path, notes: list[str]) -> tuple[float, float] | None:
    """The workers' RSS (MB) after ``n`` jobs, and its growth (%) from the ``n / 10``th job on
    (their first jobs warm caches and pools up); ``n`` jobs queued first (in bulk where the
    system can), then the workers started."""
    reset(driver)
    if driver.bulk_api:
        for first in range(0, n, BULK_CHUNK):
            driver.send_bulk([time.time()] * min(BULK_CHUNK, n - first))
    else:
        driver.send(n)
    workers = Workers(driver.workers(), logs, f"{driver.name}-memory")
    try:
        tenth = n // 10
        if wait_done(tenth, workers, timeout=3600) < tenth:
            notes.append(f"memory: only {done()} of {n} jobs ran")
            return None
        early = rss_mb(workers)
        ran = wait_done(n, workers, timeout=3600)
        late = rss_mb(workers)
    finally:
        workers.stop()
    if ran < n:
        notes.append(f"memory: only {ran} of {n} jobs ran")
        return None
    return late, (late / early - 1) * 100


def measure(name: str, jobs: int, latency_jobs: int, logs: Path, memory_jobs: int = 0) -> dict[str, Any]:
    driver = drivers.make(name)
    notes: list[str] = []
    result: dict[str, Any] = {**drivers.describe(name), "notes": notes}
    label = f"{settings.backend()}/{name}"
    driver.setup()
    try:
        reset(driver)  # warm up this process' connections (and any table a first send creates)
        driver.send(1)
        result["enqueue jobs/s"] = enqueue_rate(driver, jobs)
        print(f"  {label}: enqueue {result['enqueue jobs/s']:.0f} jobs/s", flush=True)
        result["bulk enqueue jobs/s"] = bulk_rate(driver, jobs) if driver.bulk_api else None
        if driver.bulk_api:
            print(f"  {label}: bulk enqueue {result['bulk enqueue jobs/s']:.0f} jobs/s", flush=True)
        result["drain jobs/s"] = drain(driver, jobs, logs, notes)
        print(f"  {label}: drain {result['drain jobs/s'] or 0:.0f} jobs/s", flush=True)
        lat = latency(driver, latency_jobs, logs, notes)
        result["latency p50 ms"], result["latency p99 ms"] = lat if lat else (None, None)
        if lat:
            print(f"  {label}: latency p50 {lat[0]:.1f} ms, p99 {lat[1]:.1f} ms", flush=True)
        if memory_jobs:
            mem = memory(driver, memory_jobs, logs, notes)
            if mem:
                result["worker RSS MB"], result["RSS growth %"] = mem
                print(f"  {label}: workers' RSS {mem[0]:.0f} MB ({mem[1]:+.1f} %)", flush=True)
        reset(driver)
    finally:
        driver.close()
    return result


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=sorted(drivers.DRIVERS))
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--memory-jobs", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--logs", type=Path, required=True)
    opts = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    result = measure(opts.system, opts.jobs, opts.latency_jobs, opts.logs, opts.memory_jobs)
    opts.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
