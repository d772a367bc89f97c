"""unified_jobs against plain Celery and its peers (huey, taskiq, dramatiq, procrastinate), on Redis,
Postgres and SQLite, in one run.

    .venv/bin/python bench/bench_peers.py [--jobs 3000] [--latency-jobs 200] [--rounds 1]
        [--backend redis|postgres|sqlite ...] [--systems unified_jobs,celery,huey,...]

Systems on each backend:

- Redis: unified_jobs (queue kind Redis), plain Celery (Redis broker), huey (``RedisHuey``),
  taskiq (taskiq-redis' ``RedisStreamBroker``: the one with acknowledgements, a stream read by a
  consumer group), dramatiq (``RedisBroker``);
- Postgres: unified_jobs (queue kind Postgres), plain Celery (kombu's SQLAlchemy transport,
  ``sqla+postgresql+psycopg://``: psycopg 3, as psycopg2 is not installed), procrastinate (its
  psycopg 3 connector), huey (``SqlHuey`` of huey.contrib.sql_huey, through peewee's psycopg 3
  database);
- SQLite (a file each, in a temporary folder): unified_jobs (queue kind Sqlite), plain Celery
  (``sqla+sqlite:///``), huey (``SqliteHuey``).

Every job is the same no-op, whose only work is the harness's bookkeeping
(``bench.queue_harness.note``: one pipelined write to a stats Redis). The figures, for each
system (see ``bench/peers/measure.py``): enqueue jobs/s (one job per call, from one process),
bulk enqueue jobs/s (1000 a call, with the system's own bulk API: Celery's
``group(...).apply_async()``, ``perform_all_later``, procrastinate's ``batch_defer``; huey's
``map``, dramatiq's ``group`` and taskiq have none, their "many" helpers loop over the one-job
call: "-"), drain jobs/s (N jobs queued, then the worker started: first job to last) and
enqueue-to-start latency p50/p99 (jobs sent 10 ms apart to an idle worker). Each system runs in
a process of its own (``python -m bench.peers.measure``), with its queue emptied before each
figure. With ``--rounds N`` every system is measured N times, in turn (each system's first
round, then each one's second...), and each figure is the median of its rounds (the rounds'
own figures are kept in the JSON): this machine's speed drifts over minutes, and a system
measured only minutes after another can meet a slower machine.

Worker concurrency, two processes running one job at a time each, or the closest equivalent:
unified_jobs and Celery: a prefork worker with ``--concurrency 2``; huey: ``huey_consumer -w 2
-k process``; taskiq: ``taskiq worker --workers 2 --max-async-tasks 1``; dramatiq: ``--processes
2 --threads 1``; procrastinate, whose worker is one asyncio process (``--concurrency N`` runs N
jobs within it): two ``procrastinate worker --concurrency 1`` processes, so that it may use both
cores as the others do. Every system keeps its defaults otherwise (polling intervals, acks,
job records), which shape the latency figure: dramatiq's Redis consumer has no blocking read, it
polls with an exponential backoff (5 ms up to its 1 s worker timeout) while its queue is empty;
huey's SQL consumers poll with a backoff (0.1 s to 10 s; RedisHuey blocks on BRPOP); kombu's
SQLAlchemy transport polls every second; unified_jobs' Postgres kind and procrastinate use
LISTEN/NOTIFY; taskiq blocks on XREADGROUP.

Services: a private redis-server on a free port for the whole run (its database 1 for the
queues, 0 for the stats), never the shared one; on Postgres (127.0.0.1:5432, user postgres) a
database of its own, ``uj_bench``, created for the run and dropped at its end. Configuration
reaches the worker subprocesses through ``BENCH_BACKEND``, ``BENCH_REDIS_URL``,
``BENCH_STATS_URL``, ``BENCH_PG_URL`` and ``BENCH_SQLITE_PATH``.

Prints a table per backend (every figure of every system, and unified_jobs' ratio to Celery and
to the best peer, >1.0 meaning unified_jobs is better, for latency too), writes the raw results
to bench/results/peers.json and draws bench/results/peers.png (``bench/chart.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peers.drivers import BACKENDS  # noqa: E402
from bench.peers.report import table  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_DB = "uj_bench"
#: The libraries each system needs in the enqueuing process and its workers.
NEEDS = {
    "unified_jobs": ["unified_jobs"],
    "uj-processes": ["unified_jobs"],
    "celery": ["celery"],
    "huey": ["huey"],
    "taskiq": ["taskiq", "taskiq_redis"],
    "dramatiq": ["dramatiq", "redis"],
    "procrastinate": ["procrastinate", "psycopg"],
}
PACKAGES = [
    "unified-jobs",
    "celery",
    "kombu",
    "redis",
    "SQLAlchemy",
    "psycopg",
    "huey",
    "peewee",
    "taskiq",
    "taskiq-redis",
    "dramatiq",
    "procrastinate",
    "matplotlib",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=3000, help="jobs for the enqueue and drain figures")
    parser.add_argument("--latency-jobs", type=int, default=200, help="jobs for the latency figure")
    parser.add_argument(
        "--memory-jobs", type=int, default=0, help="jobs for the worker memory figures (default: none)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every system this many times, in turn (round 1 of each, then round 2...), "
        "and report each figure's median: this machine's speed drifts over minutes",
    )
    parser.add_argument("--backend", action="append", choices=list(BACKENDS), help="repeatable; default: all")
    parser.add_argument("--systems", default="", help="comma-separated, e.g. unified_jobs,celery,huey")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.json", help="the JSON results")
    parser.add_argument("--chart", type=Path, default=None, help="the PNG (default: --out's, .png)")
    opts = parser.parse_args(argv)
    if opts.rounds < 1:
        parser.error("--rounds must be at least 1")
    opts.backend = opts.backend or list(BACKENDS)
    opts.systems = [s for s in opts.systems.split(",") if s]
    known = {s for names in BACKENDS.values() for s in names}
    unknown = [s for s in opts.systems if s not in known]
    if unknown:
        parser.error(f"unknown systems {', '.join(unknown)}: choose among {', '.join(sorted(known))}")
    return opts


def missing(system: str, backend: str) -> str | None:
    """Why ``system`` cannot run on ``backend`` here (a library that does not import), or None."""
    import importlib

    needs = NEEDS[system] + (
        ["peewee", "huey.contrib.sql_huey"] if (system, backend) == ("huey", "postgres") else []
    )
    for module in needs:
        try:
            importlib.import_module(module)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            return f"{module} does not import ({why}); pip install -r bench/requirements-peers.txt"
    return None


def pg_reachable() -> str | None:
    import psycopg

    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN}: {exc}"
    return None


def pg_database(create: bool) -> str:
    """Create (if it does not exist) or drop the benchmark's own database; its URL."""
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DB,)).fetchone()
        if create and not exists:
            conn.execute(f"CREATE DATABASE {PG_DB}")
        elif not create and exists:
            conn.execute(f"DROP DATABASE {PG_DB}")
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{PG_DB}"


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


class Child:
    """The ``bench.peers.measure`` process of one system (stopped in a ``finally``)."""

    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def stop(cls) -> None:
        proc, cls.proc = cls.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # it stops its workers, then exits
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_system(backend: str, system: str, opts: argparse.Namespace, tmp: Path) -> dict[str, Any] | str:
    """The figures of one system (a dict), or why there are none (a string)."""
    out, logs = tmp / f"{backend}-{system}.json", tmp / "logs"
    logs.mkdir(exist_ok=True)
    stderr = logs / f"{backend}-{system}.stderr"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_BACKEND": backend,
        "BENCH_SQLITE_PATH": str(tmp / f"{system}.db"),
    }
    argv = [sys.executable, "-m", "bench.peers.measure", system, "--jobs", str(opts.jobs)]
    argv += ["--latency-jobs", str(opts.latency_jobs), "--out", str(out), "--logs", str(logs)]
    argv += ["--memory-jobs", str(opts.memory_jobs)]
    with stderr.open("wb") as err:
        Child.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=err)
        code = Child.proc.wait()
        Child.proc = None
    if code != 0 or not out.exists():
        tail = stderr.read_text(errors="replace").strip().splitlines()[-12:]
        return f"its measurement failed (exit {code}):\n      " + "\n      ".join(tail)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's figures over its rounds: the median of each number (None where no round
    has one), the other fields of the first round, every round's notes, and the rounds' own
    numbers under ``"rounds"`` (when there is more than one)."""
    if len(rounds) == 1:
        return rounds[0]
    combined: dict[str, Any] = dict(rounds[0])
    for key, value in rounds[0].items():
        if key == "notes":
            combined[key] = [f"round {i}: {n}" for i, r in enumerate(rounds, 1) for n in r.get("notes", [])]
        elif value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            numbers = [r[key] for r in rounds if isinstance(r.get(key), int | float)]
            combined[key] = statistics.median(numbers) if numbers else None
    combined["rounds"] = [
        {k: v for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)} for r in rounds
    ]
    return combined


def run(opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from tests.procs import PrivateRedis

    results: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "jobs": opts.jobs,
            "latency_jobs": opts.latency_jobs,
            "rounds": opts.rounds,
            "bulk_chunk": 1000,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "versions": versions(),
        },
        "backends": {},
    }
    redis = PrivateRedis(tmp)
    pg_made = False
    try:
        base = redis.url.rsplit("/", 1)[0]
        os.environ["BENCH_REDIS_URL"], os.environ["BENCH_STATS_URL"] = f"{base}/1", f"{base}/0"
        for backend in opts.backend:
            data: dict[str, Any] = {
                "jobs": opts.jobs,
                "latency_jobs": opts.latency_jobs,
                "memory_jobs": opts.memory_jobs or None,
                "rounds": opts.rounds,
                "systems": {},
                "left_out": {},
            }
            names = [s for s in BACKENDS[backend] if not opts.systems or s in opts.systems]
            if backend == "postgres":
                reason = pg_reachable()
                if reason:
                    data["left_out"] = dict.fromkeys(names, reason)
                    names = []
                else:
                    os.environ["BENCH_PG_URL"] = pg_database(create=True)
                    pg_made = True
            results["backends"][backend] = data
            measured: dict[str, list[dict[str, Any]]] = {}
            for round_ in range(1, opts.rounds + 1):
                for system in names:
                    if system in data["left_out"]:
                        continue
                    of = f" (round {round_} of {opts.rounds})" if opts.rounds > 1 else ""
                    print(f"== {backend}: {system}{of}", flush=True)
                    outcome = missing(system, backend) or run_system(backend, system, opts, tmp)
                    if isinstance(outcome, str):
                        print(f"  {system} left out: {outcome}", flush=True)
                        data["left_out"][system] = outcome
                    else:
                        measured.setdefault(system, []).append(outcome)
            for system, rounds in measured.items():
                if system not in data["left_out"]:
                    data["systems"][system] = combine(rounds)
    finally:
        Child.stop()
        redis.stop()
        if pg_made:
            try:
                pg_database(create=False)
            except Exception as exc:
                print(f"could not drop the database {PG_DB}: {exc}", file=sys.stderr)
    results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    return results


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    with tempfile.TemporaryDirectory(prefix="uj-bench-peers-") as d:
        results = run(opts, Path(d))
    for backend, data in results["backends"].items():
        print(table(backend, data))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nraw results: {opts.out}")
    chart = opts.chart or opts.out.with_suffix(".png")
    try:
        from bench.chart import draw
    except ImportError as exc:
        print(f"no chart ({exc}): pip install matplotlib")
    else:
        draw(results, chart)
        print(f"chart: {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
