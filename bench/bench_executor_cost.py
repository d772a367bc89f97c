"""The executor's added cost per job on each queue kind: this tree against 8a55e70 (before it).

    .venv/bin/python bench/bench_executor_cost.py [--jobs 2000] [--reps 3] [--kinds redis,sqlite,postgres]

8a55e70 is the last commit before the executor (92de81d): its tree is extracted with
``git archive`` to a temporary folder (or ``--old DIR``); the current tree (HEAD plus uncommitted
work) is copied at start (or ``--new DIR``), so both sides stay the same for the whole run. Each
side only ever runs in its own subprocesses, with ``PYTHONPATH`` at its tree, and only through
the public API both have: ``Config.from_dict``, ``Jobs``, ``Worker``, ``perform_later``,
``perform_all_later`` and ``python -m unified_jobs --app ... start --worker``.

Per queue kind and side, one run is: a producer process enqueues 1 warm-up job, then N no-op
jobs one ``perform_later`` at a time (timed), then N in ``perform_all_later`` calls of 500
(timed); then a worker (prefork, concurrency 2) is started on the 2N+1 queued jobs and drains
them. The job appends its start and end times to a file; drain rate is jobs / (last end - start
of the first job after the first 2%, the pool's warm-up). Runs alternate old/new in ABBA order,
repeated ``--reps`` times, every kind in each round, so machine noise hits both sides; the
table gives the median of each side, the new/old ratio of the medians, and each round's own
new/old ratio: median [min..max] and in how many rounds new was slower (the noise to read the
ratio against: on a busy 2-core machine a round's ratio can be off by 20% or more).

Redis: database 6 of redis://127.0.0.1:6379 (``--redis-db``; it must be empty or hold only
this benchmark's keys; it is flushed). Postgres: UJ_BENCH_PG_URI or
postgresql://postgres@127.0.0.1:5432/test, fresh ``ujcost_<tag>_...`` tables per run, all dropped
after. SQLite: a fresh file per run in a temporary folder.

This file is also the Jobs app of the producer and worker subprocesses (configured by
environment: UJ_COST_KIND, UJ_COST_URI, UJ_COST_PREFIX, UJ_COST_OUT).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

QUEUE = "ujcost"
BASE = "8a55e70"
CHUNK = 500
WARMUP_SKIP = 0.02
PG = os.environ.get("UJ_BENCH_PG_URI", "postgresql://postgres@127.0.0.1:5432/test")
KIND_NAMES = {"redis": "Redis", "postgres": "Postgres", "sqlite": "Sqlite"}


# -- the app (runs in the subprocesses only, under either tree) ---------------------------------


def _make_app() -> tuple[Any, Any]:
    from pydantic import BaseModel

    from unified_jobs import Config, Jobs, Worker

    out = os.environ["UJ_COST_OUT"]

    class NoopArgs(BaseModel):
        i: int

    class Noop(Worker[NoopArgs]):
        name = "ujcost.noop"
        queue = QUEUE

        def perform(self, args: NoopArgs) -> None:
            started = time.time()
            fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{started:.6f} {time.time():.6f}\n".encode())
            finally:
                os.close(fd)

    queue: dict[str, Any] = {"kind": os.environ["UJ_COST_KIND"], "uri": os.environ["UJ_COST_URI"]}
    if os.environ.get("UJ_COST_PREFIX"):
        queue["table_prefix"] = os.environ["UJ_COST_PREFIX"]
    app = Jobs(Config.from_dict({"workers": {"mode": "BackgroundQueue"}, "queue": queue}))
    app.register(Noop)
    return app, Noop


if os.environ.get("UJ_COST_KIND") and __name__ != "__main__":  # the worker's --app import
    import unified_jobs as _uj

    print(f"ujcost app: unified_jobs from {Path(_uj.__file__).parent}", file=sys.stderr, flush=True)
    jobs, Noop = _make_app()


def produce(n: int) -> None:
    """Producer role: warm up, then time N single and N bulk enqueues; prints JSON."""
    import unified_jobs

    app, noop = _make_app()
    app.perform_later(noop, {"i": -1})  # connections, schema, first-call imports
    start = time.perf_counter()
    for i in range(n):
        app.perform_later(noop, {"i": i})
    single = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for first in range(0, n, CHUNK):
        app.perform_all_later(noop, [{"i": i} for i in range(first, min(n, first + CHUNK))])
    bulk = n / (time.perf_counter() - start)
    app.shutdown()
    print(json.dumps({"single": single, "bulk": bulk, "tree": str(Path(unified_jobs.__file__).parent)}))


# -- the driver (imports no unified_jobs) --------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def prepare_trees(tmp: Path, old: str | None, new: str | None) -> dict[str, Path]:
    if old is None:
        old_dir = tmp / f"uj-{BASE}"
        old_dir.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", BASE, "unified_jobs"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old_dir)], input=archive, check=True)
    else:
        old_dir = Path(old).resolve()
    if new is None:
        new_dir = tmp / "uj-current"
        shutil.copytree(
            ROOT / "unified_jobs", new_dir / "unified_jobs", ignore=shutil.ignore_patterns("__pycache__")
        )
    else:
        new_dir = Path(new).resolve()
    return {"old": old_dir, "new": new_dir}


def side_env(tree: Path, appdir: Path, kind: str, uri: str, prefix: str, out: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNIFIED_JOBS_", "UJ_COST_"))}
    env.update(
        PYTHONPATH=f"{tree}{os.pathsep}{appdir}",
        UJ_COST_KIND=kind,
        UJ_COST_URI=uri,
        UJ_COST_PREFIX=prefix,
        UJ_COST_OUT=str(out),
    )
    return env


def _lines(out: Path) -> list[tuple[float, float]]:
    if not out.exists():
        return []
    rows = []
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            rows.append((float(parts[0]), float(parts[1])))
    return rows


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Backends:
    """Fresh, private queue state for each run, and cleanup."""

    def __init__(self, tmp: Path, redis_db: int) -> None:
        self.tmp = tmp
        self.tag = uuid.uuid4().hex[:8]
        self.redis_url = f"redis://127.0.0.1:6379/{redis_db}"
        self.pg_prefixes: list[str] = []
        self._redis: Any = None

    def check_redis(self) -> None:
        import redis

        self._redis = redis.Redis.from_url(self.redis_url)
        keys = [k.decode() for k in self._redis.scan_iter(count=1000)]
        foreign = [k for k in keys if not (k.startswith(("unified_jobs:", "_kombu.")) or QUEUE in k)]
        if foreign:
            raise SystemExit(
                f"{self.redis_url} holds keys this benchmark did not write (e.g. {foreign[:3]}); "
                "pick a free database with --redis-db"
            )

    def fresh(self, kind: str, side: str, rnd: int) -> tuple[str, str]:
        """(uri, table prefix) for one run."""
        if kind == "redis":
            self._redis.flushdb()
            return self.redis_url, ""
        if kind == "sqlite":
            path = self.tmp / f"{side}{rnd}.db"
            return f"sqlite:///{path}", ""
        prefix = f"ujcost_{self.tag}_{side}{rnd}_"
        self.pg_prefixes.append(prefix)
        return PG, prefix

    def cleanup(self, kind: str, prefix: str) -> None:
        if kind == "redis":
            self._redis.flushdb()
        elif kind == "postgres" and prefix:
            import psycopg

            # Every table and function of the run's prefix (the schema grows between versions).
            like = prefix.replace("_", r"\_") + "%"
            with psycopg.connect(PG, autocommit=True) as conn:
                tables = conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (like,))
                for (table,) in tables.fetchall():
                    conn.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
                functions = conn.execute("SELECT proname FROM pg_proc WHERE proname LIKE %s", (like,))
                for (function,) in functions.fetchall():
                    conn.execute(f'DROP FUNCTION IF EXISTS "{function}" CASCADE')
            self.pg_prefixes.remove(prefix)

    def close(self) -> None:
        for prefix in list(self.pg_prefixes):
            self.cleanup("postgres", prefix)
        if self._redis is not None:
            self._redis.flushdb()


def run_one(
    kind: str, side: str, tree: Path, appdir: Path, backends: Backends, rnd: int, n: int
) -> dict[str, float]:
    uri, prefix = backends.fresh(kind, side, rnd)
    out = backends.tmp / f"{kind}-{side}-{rnd}.out"
    log_path = backends.tmp / f"{kind}-{side}-{rnd}.log"
    env = side_env(tree, appdir, KIND_NAMES[kind], uri, prefix, out)
    try:
        produced = subprocess.run(
            [sys.executable, str(appdir / Path(__file__).name), "--role", "produce", "--jobs", str(n)],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if produced.returncode != 0:
            raise SystemExit(f"{kind} {side} producer failed:\n{produced.stderr[-3000:]}")
        figures: dict[str, Any] = json.loads(produced.stdout.strip().splitlines()[-1])
        if Path(figures["tree"]) != tree / "unified_jobs":
            raise SystemExit(f"{side} producer imported {figures['tree']}, not {tree / 'unified_jobs'}")
        total = 2 * n + 1
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "unified_jobs",
                    "--app",
                    "bench_executor_cost:jobs",
                    "start",
                    "--worker",
                    "-q",
                    QUEUE,
                    "--concurrency",
                    "2",
                    "--pool",
                    "prefork",
                    "--loglevel",
                    "WARNING",
                    "--",
                    "--without-mingle",
                    "--without-gossip",
                    "--without-heartbeat",
                ],
                cwd=tree,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + 600
                while len(rows := _lines(out)) < total:
                    if worker.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(
                            f"{kind} {side}: {len(rows)} of {total} jobs ran; worker log:\n"
                            + log_path.read_text()[-3000:]
                        )
                    time.sleep(0.05)
            finally:
                _stop(worker)
        text = log_path.read_text()
        if f"unified_jobs from {tree / 'unified_jobs'}" not in text:
            raise SystemExit(f"{side} worker did not import {tree / 'unified_jobs'}:\n{text[-2000:]}")
        rows.sort()
        skip = int(len(rows) * WARMUP_SKIP)
        span = max(end for _, end in rows) - rows[skip][0]
        figures["drain"] = (len(rows) - skip) / span
        figures["ran"] = len(rows)
        return figures
    finally:
        backends.cleanup(kind, prefix)
        out.unlink(missing_ok=True)


FIGURES = [
    ("single", "enqueue jobs/s (perform_later)"),
    ("bulk", f"enqueue jobs/s (perform_all_later x{CHUNK})"),
    ("drain", "drain jobs/s (prefork c=2)"),
]


def report(results: dict[str, dict[str, list[dict[str, float]]]], n: int, reps: int) -> None:
    print(f"\n{n} no-op jobs per enqueue figure, {2 * n + 1} drained; {reps} rounds, ABBA order")
    print(f"old = {BASE} (before the executor), new = current tree; old and new: median of the rounds")
    print("new/old: of the medians; rounds: each round's new/old, median [min..max], rounds new slower")
    head = f"{'kind':9} {'figure':38} {'old':>7} {'new':>7} {'new/old':>7} {'diff':>7}  rounds"
    print(head)
    print("-" * (len(head) + 30))
    for kind, sides in results.items():
        for key, label in FIGURES:
            old = [r[key] for r in sides["old"]]
            new = [r[key] for r in sides["new"]]
            mo, mn = statistics.median(old), statistics.median(new)
            paired = [b / a for a, b in zip(old, new, strict=True)]
            slower, mid = sum(p < 1 for p in paired), statistics.median(paired)
            print(
                f"{kind:9} {label:38} {mo:7.0f} {mn:7.0f} {mn / mo:7.3f} {100 * (mn / mo - 1):+6.1f}%  "
                f"{mid:.3f} [{min(paired):.3f}..{max(paired):.3f}] {slower}/{len(paired)}"
            )
        old_us = 1e6 / statistics.median(r["drain"] for r in sides["old"])
        new_us = 1e6 / statistics.median(r["drain"] for r in sides["new"])
        label = "drain us/job (wall, 2 processes)"
        print(f"{kind:9} {label:38} {old_us:7.0f} {new_us:7.0f} {'':7} {new_us - old_us:+5.0f}us")
    print("\nspread (min..max of each side's runs, jobs/s):")
    for kind, sides in results.items():
        cells = []
        for key, _ in FIGURES:
            for side in ("old", "new"):
                vals = [r[key] for r in sides[side]]
                cells.append(f"{key} {side} {min(vals):.0f}..{max(vals):.0f}")
        print(f"  {kind:9} " + "; ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--kinds", default="redis,sqlite,postgres")
    parser.add_argument("--redis-db", type=int, default=6)
    parser.add_argument("--old", help=f"a tree of {BASE} (default: git archive into a temporary folder)")
    parser.add_argument("--new", help="the tree to compare (default: a copy of this working tree's)")
    parser.add_argument("--role", choices=["produce"], help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.role == "produce":
        produce(opts.jobs)
        return
    kinds = [k.strip() for k in opts.kinds.split(",") if k.strip()]
    unknown = set(kinds) - set(KIND_NAMES)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KIND_NAMES)}")
    with tempfile.TemporaryDirectory(prefix="ujcost-") as d:
        tmp = Path(d)
        trees = prepare_trees(tmp, opts.old, opts.new)
        appdir = tmp / "app"
        appdir.mkdir()
        shutil.copy2(Path(__file__), appdir / Path(__file__).name)
        backends = Backends(tmp, opts.redis_db)
        if "redis" in kinds:
            backends.check_redis()
        if "postgres" in kinds:
            try:
                import psycopg

                psycopg.connect(PG, connect_timeout=2).close()
            except Exception as exc:
                print(f"PostgreSQL not reachable at {PG} ({exc}): skipping it")
                kinds.remove("postgres")
        print(f"old: {trees['old']}\nnew: {trees['new']}", flush=True)
        results: dict[str, dict[str, list[dict[str, float]]]] = {k: {"old": [], "new": []} for k in kinds}
        try:
            for rnd in range(opts.reps):
                order = ("old", "new") if rnd % 2 == 0 else ("new", "old")
                for kind in kinds:
                    for side in order:
                        r = run_one(kind, side, trees[side], appdir, backends, rnd, opts.jobs)
                        results[kind][side].append(r)
                        print(
                            f"round {rnd + 1}/{opts.reps} {kind:8} {side}: enqueue {r['single']:6.0f}/s "
                            f"bulk {r['bulk']:6.0f}/s drain {r['drain']:6.0f}/s (ran {r['ran']:.0f})",
                            flush=True,
                        )
        finally:
            backends.close()
    report(results, opts.jobs, opts.reps)


if __name__ == "__main__":
    main()
