"""Benchmark: the project's SQL transport (``ujsql+``) against kombu's bundled ``sqla+``.

Run:  .venv/bin/python bench/bench_sql_queue.py [--jobs 5000] [--latency-samples 100]

For each of Postgres and SQLite, and each transport, with plain Celery and the same settings
(prefork pool, concurrency 2, acks_late, no result backend):

- enqueue: ``send_task`` of N no-op jobs from this process, jobs/s;
- drain: a worker subprocess started on the N queued jobs; first task start to last task end;
- latency: with the worker idle, one job at a time, enqueue to task start, p50 and p99.

Each run uses fresh tables (Postgres) or files (SQLite) and removes them afterwards.
This file is also the Celery app of the worker subprocesses (configured by environment).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

import unified_jobs.adapters.sql  # noqa: F401  (registers ujsql)

ROOT = Path(__file__).resolve().parents[1]
PG = os.environ.get("UJ_BENCH_PG_URI", "postgresql://postgres@127.0.0.1:5432/test")


def make_app(broker: str, options: dict[str, Any]) -> Celery:
    app = Celery("bench_sql_queue", broker=broker)
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
    )
    return app


app = make_app(
    os.environ.get("UJ_BENCH_BROKER", "memory://"), json.loads(os.environ.get("UJ_BENCH_OPTS", "{}"))
)


@app.task(name="bench.noop")
def noop(sent: float) -> None:
    started = time.time()
    fd = os.open(os.environ["UJ_BENCH_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{sent:.6f} {started:.6f} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


@dataclass
class Result:
    name: str
    enqueue_rate: float
    drain_rate: float
    p50_ms: float
    p99_ms: float
    lines: int
    expected: int


def _lines(out: Path) -> list[tuple[float, float, float]]:
    if not out.exists():
        return []
    rows = []
    for line in out.read_text().splitlines():
        a, b, c = line.split()
        rows.append((float(a), float(b), float(c)))
    return rows


def _wait_lines(out: Path, n: int, timeout: float) -> list[tuple[float, float, float]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _lines(out)
        if len(rows) >= n:
            return rows
        time.sleep(0.05)
    return _lines(out)


def run_one(name: str, broker: str, options: dict[str, Any], jobs: int, samples: int, tmp: Path) -> Result:
    out = tmp / f"{name.replace(' ', '_').replace('+', '')}.txt"
    producer = make_app(broker, options)
    # Enqueue with no worker running.
    start = time.perf_counter()
    for _ in range(jobs):
        producer.send_task("bench.noop", args=(0.0,))
    enqueue_rate = jobs / (time.perf_counter() - start)

    env = {
        **os.environ,
        "UJ_BENCH_BROKER": broker,
        "UJ_BENCH_OPTS": json.dumps(options),
        "UJ_BENCH_OUT": str(out),
    }
    log = (tmp / f"{out.stem}.log").open("wb")
    worker = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("celery")),
            "-A",
            "bench.bench_sql_queue",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "-l",
            "WARNING",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        rows = _wait_lines(out, jobs, timeout=120)
        drained = len(rows)
        drain_rate = (drained / (max(r[2] for r in rows) - min(r[1] for r in rows))) if rows else 0.0
        # Latency: one job at a time on the idle worker.
        # Latency: jobs sent 50 ms apart to the now idle worker (a job takes well under 50 ms,
        # so each one finds the worker waiting, as in a quiet production queue).
        time.sleep(0.5)
        for _ in range(samples):
            producer.send_task("bench.noop", args=(time.time(),))
            time.sleep(0.05)
        got = _wait_lines(out, drained + samples, timeout=10)
        latencies = [(started - sent) * 1000 for sent, started, _ in got[drained:]]
        total = len(got)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()
        producer.close()
    latencies.sort()
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
    return Result(name, enqueue_rate, drain_rate, p50, p99, total, jobs + samples)


def _pg_up() -> bool:
    try:
        import psycopg

        psycopg.connect(PG, connect_timeout=2).close()
        return True
    except Exception:
        return False


def _drop_pg_tables(names: list[str]) -> None:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        for name in names:
            conn.execute(f"DROP TABLE IF EXISTS {name} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--only", choices=["postgres", "sqlite"], default=None)
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    prefix = f"ujbench_{tag}_"
    kombu_q, kombu_m = f"ujbench_{tag}_kq", f"ujbench_{tag}_km"
    sqla_opts = {"queue_tablename": kombu_q, "message_tablename": kombu_m}
    ours_opts = {"table_prefix": prefix}
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="ujbench-") as d:
        tmp = Path(d)
        plans = []
        if args.only in (None, "postgres"):
            if _pg_up():
                pg_sa = PG.replace("postgresql://", "postgresql+psycopg://", 1)
                plans += [
                    ("postgres ujsql", f"ujsql+{PG}", ours_opts),
                    ("postgres sqla", f"sqla+{pg_sa}", sqla_opts),
                ]
            else:
                print(f"PostgreSQL not reachable at {PG}: skipping it")
        if args.only in (None, "sqlite"):
            plans += [
                ("sqlite ujsql", f"ujsql+sqlite:///{tmp / 'ours.db'}", ours_opts),
                ("sqlite sqla", f"sqla+sqlite:///{tmp / 'kombu.db'}", sqla_opts),
            ]
        try:
            for name, broker, opts in plans:
                print(f"running {name} ...", flush=True)
                r = run_one(name, broker, opts, args.jobs, args.latency_samples, tmp)
                results.append(r)
                print(
                    f"  enqueue {r.enqueue_rate:7.0f} jobs/s   drain {r.drain_rate:7.0f} jobs/s   "
                    f"latency p50 {r.p50_ms:7.1f} ms  p99 {r.p99_ms:7.1f} ms   "
                    f"ran {r.lines}/{r.expected}",
                    flush=True,
                )
        finally:
            if any(n.startswith("postgres") for n, _, _ in plans):
                from unified_jobs.adapters.sql.engine import get_engine
                from unified_jobs.adapters.sql.schema import drop_schema, tables_for

                _drop_pg_tables([kombu_m, kombu_q])
                drop_schema(get_engine(PG), tables_for(prefix))  # every table of ours, and functions

    print("\nsummary (ujsql vs kombu sqla, same database, Celery prefork c=2):")
    print(f"{'':10} {'enqueue/s':>18} {'drain/s':>18} {'p50 ms':>18} {'p99 ms':>18}")
    by = {r.name: r for r in results}
    for db in ("postgres", "sqlite"):
        ours, theirs = by.get(f"{db} ujsql"), by.get(f"{db} sqla")
        if not ours or not theirs:
            continue

        def cell(a: float, b: float) -> str:
            return f"{a:6.0f} vs {b:5.0f}"

        print(
            f"{db:10} {cell(ours.enqueue_rate, theirs.enqueue_rate):>18} "
            f"{cell(ours.drain_rate, theirs.drain_rate):>18} "
            f"{ours.p50_ms:6.1f} vs {theirs.p50_ms:5.0f} {ours.p99_ms:6.1f} vs {theirs.p99_ms:5.0f}"
        )
        print(
            f"{'  ratio':10} {'x%.2f' % (ours.enqueue_rate / theirs.enqueue_rate):>18} "
            f"{'x%.2f' % (ours.drain_rate / theirs.drain_rate):>18} "
            f"{'/%.1f' % (theirs.p50_ms / ours.p50_ms):>18} {'/%.1f' % (theirs.p99_ms / ours.p99_ms):>18}"
        )
    lost = [r for r in results if r.lines < r.expected]
    if lost:
        print("\nWARNING: jobs missing in " + ", ".join(f"{r.name} ({r.lines}/{r.expected})" for r in lost))


if __name__ == "__main__":
    main()
