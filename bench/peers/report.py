"""The table of one backend: every figure of every system, and unified_jobs' ratios to plain
Celery and to the best peer (huey, taskiq, dramatiq, procrastinate: not Celery) on that figure.
Ratios are "better than" factors: for rates unified_jobs / other, for latency other /
unified_jobs, so >1.0 always means unified_jobs is better."""

from __future__ import annotations

from typing import Any

FIGURES = ["enqueue jobs/s", "bulk enqueue jobs/s", "drain jobs/s", "latency p50 ms", "latency p99 ms"]
#: With ``--memory-jobs``: the workers' memory (every process of theirs) after a tenth of the
#: jobs, and its growth from there to the last job.
MEMORY_FIGURES = ["worker RSS MB", "RSS growth %"]
OURS, CELERY = "unified_jobs", "celery"
#: unified_jobs with ``start --worker --pool processes``: ours too, never a peer.
OURS_PROCESSES = "uj-processes"


def lower_is_better(figure: str) -> bool:
    return figure.startswith(("latency", "worker RSS", "RSS growth"))


def advantage(figure: str, ours: float | None, other: float | None) -> float | None:
    """How many times better unified_jobs is than ``other`` (>1.0: better)."""
    if ours is None or other is None or ours <= 0 or other <= 0:
        return None
    return other / ours if lower_is_better(figure) else ours / other


def best_peer(figure: str, systems: dict[str, dict[str, Any]]) -> tuple[str, float] | None:
    values = [
        (name, r[figure])
        for name, r in systems.items()
        if name not in (OURS, OURS_PROCESSES, CELERY) and r.get(figure)
    ]
    if not values:
        return None
    pick = min if lower_is_better(figure) else max
    return pick(values, key=lambda nv: nv[1])


def cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def ratios(
    figure: str, systems: dict[str, dict[str, Any]], ours_name: str = OURS
) -> tuple[float | None, float | None, str]:
    """unified_jobs (or ``ours_name``: uj-processes) against Celery, against the best peer, and
    that peer's name."""
    if figure == "RSS growth %":  # near 0 on every side: a ratio of such would say nothing
        return None, None, ""
    ours = systems.get(ours_name, {}).get(figure)
    vs_celery = advantage(figure, ours, systems.get(CELERY, {}).get(figure))
    best = best_peer(figure, systems)
    if best is None:
        return vs_celery, None, ""
    return vs_celery, advantage(figure, ours, best[1]), best[0]


def table(backend: str, data: dict[str, Any]) -> str:
    systems: dict[str, dict[str, Any]] = data["systems"]
    names = list(systems)
    width = max([13, *(len(n) + 1 for n in names)])
    lines = [
        f"\n{backend}: {data['jobs']} no-op jobs; latency over {data['latency_jobs']} jobs sent 10 ms apart"
        + (f"; each figure the median of {data['rounds']} rounds" if data.get("rounds", 1) > 1 else ""),
        "ratios: how many times unified_jobs is better (rates: uj/other; latency: other/uj; >1.0 = uj "
        "better); best peer = fastest of huey/taskiq/dramatiq/procrastinate on that figure",
    ]
    head = f"{'figure':22}" + "".join(f"{n:>{width}}" for n in names)
    head += f"{'uj vs celery':>14}{'uj vs best peer':>27}"
    processes = OURS_PROCESSES in systems
    if processes:
        head += f"{'processes vs best peer':>27}"
    lines += [head, "-" * len(head)]
    memory = any(f in r for r in systems.values() for f in MEMORY_FIGURES)
    if memory:
        lines.insert(1, f"memory: every worker process's RSS over {data.get('memory_jobs')} jobs")
    for figure in FIGURES + (MEMORY_FIGURES if memory else []):
        row = f"{figure:22}" + "".join(f"{cell(systems[n].get(figure)):>{width}}" for n in names)
        vs_celery, vs_peer, peer = ratios(figure, systems)
        row += f"{'-' if vs_celery is None else f'{vs_celery:.2f}':>14}"
        row += f"{'-' if vs_peer is None else f'{vs_peer:.2f} ({peer})':>27}"
        if processes:
            _, vs_peer, peer = ratios(figure, systems, OURS_PROCESSES)
            row += f"{'-' if vs_peer is None else f'{vs_peer:.2f} ({peer})':>27}"
        lines.append(row)
    for name, r in systems.items():
        lines.append(f"  {name}: workers {r['concurrency']}; bulk: {r['bulk_api'] or 'none'}")
        lines += [f"    note: {note}" for note in r.get("notes", [])]
    for name, reason in data.get("left_out", {}).items():
        lines.append(f"  {name}: left out: {reason}")
    return "\n".join(lines)
