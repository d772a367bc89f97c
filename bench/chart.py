"""The chart of ``bench_peers``' results: one column per backend; on top, grouped bars of the rates
(enqueue, bulk enqueue, drain; jobs/s, log scale) per system; below, the latency p50 and p99 (ms,
log scale) per system. Re-draw it from the JSON:

    .venv/bin/python bench/chart.py bench/results/peers.json [bench/results/peers.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

RATES = ["enqueue jobs/s", "bulk enqueue jobs/s", "drain jobs/s"]
LATENCIES = ["latency p50 ms", "latency p99 ms"]


def _bars(ax: Axes, systems: dict[str, dict[str, Any]], figures: list[str], unit: str) -> None:
    ax.set_yscale("log")
    names = list(systems)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(figures))]
        values = [systems[name].get(f) for f in figures]
        shown = [v if v else float("nan") for v in values]
        edge = "black" if name == "unified_jobs" else None
        bars = ax.bar(xs, shown, width, label=name, color=f"C{i}", edgecolor=edge)
        for x, bar, value in zip(xs, bars, values, strict=True):
            if value:
                label = f"{value:.0f}" if value >= 10 else f"{value:.1f}"
                at, coords = (x, bar.get_height()), "data"
            else:  # the system has no such figure: "n/a" at the foot of the axis
                label, at, coords = "n/a", (x, 0.02), ax.get_xaxis_transform()
            ax.annotate(
                label,
                at,
                xycoords=coords,
                ha="center",
                va="bottom",
                fontsize=6,
                rotation=90,
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.set_xticks(range(len(figures)))
    ax.set_xticklabels([f.replace(f" {unit}", "") for f in figures], fontsize=8)
    ax.set_ylabel(unit)
    ax.grid(axis="y", which="both", alpha=0.3)


def draw(results: dict[str, Any], path: Path) -> None:
    """Draw ``results`` (the dict ``bench_peers`` writes as JSON) to the PNG ``path``."""
    backends = {b: d for b, d in results["backends"].items() if d.get("systems")}
    columns = max(1, len(backends))
    fig, axes = plt.subplots(2, columns, figsize=(5.5 * columns, 8), squeeze=False)
    meta = results.get("meta", {})
    for col, (backend, data) in enumerate(backends.items()):
        systems = data["systems"]
        top, bottom = axes[0][col], axes[1][col]
        _bars(top, systems, RATES, "jobs/s")
        top.set_title(f"{backend}: rates (higher is better)")
        _bars(bottom, systems, LATENCIES, "ms")
        bottom.set_title(f"{backend}: enqueue-to-start latency (lower is better)")
        low, high = top.get_ylim()
        top.set_ylim(low, high * 4)  # room above the bars for the legend
        top.legend(fontsize=7, loc="upper center", ncols=min(3, len(systems)))
    fig.suptitle(
        f"unified_jobs vs Celery and peers: {meta.get('jobs', '?')} no-op jobs, worker concurrency 2, "
        f"{meta.get('cpus', '?')} CPUs ({meta.get('started', '')})",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    source = Path(sys.argv[1])
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else source.with_suffix(".png")
    draw(json.loads(source.read_text()), target)
    print(f"chart: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
