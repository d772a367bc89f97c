"""The throughput chart as inline SVG, drawn on the server: no script, no chart library."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from unified_jobs.core.monitor import ThroughputBucket

__all__ = ["throughput_svg"]

WIDTH, HEIGHT = 720, 160
LEFT, BOTTOM, TOP = 44, 22, 10


def throughput_svg(buckets: Sequence[ThroughputBucket]) -> str:
    """Stacked bars per minute (completed, then failed on top), with the peak on the y axis and
    the first and last minute on the x axis. Each bar has a ``<title>`` for a tooltip."""
    if not buckets:
        return ""
    peak = max((b.completed + b.failed for b in buckets), default=0) or 1
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    step = plot_w / len(buckets)
    bar = max(1.0, step - 2)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="jobs ended per minute, last {len(buckets)} minutes" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 8}" y2="{TOP + plot_h}" class="axis"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 8}" class="tick" text-anchor="end">{peak}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" class="tick" text-anchor="end">0</text>',
    ]
    for i, b in enumerate(buckets):
        x = LEFT + i * step + 1
        done_h = plot_h * b.completed / peak
        failed_h = plot_h * b.failed / peak
        label = escape(f"{b.start:%H:%M} UTC: {b.completed} completed, {b.failed} failed")
        parts.append(f"<g><title>{label}</title>")
        if b.completed:
            y = TOP + plot_h - done_h
            parts.append(
                f'<rect class="done" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{done_h:.1f}"/>'
            )
        if b.failed:
            y = TOP + plot_h - done_h - failed_h
            parts.append(
                f'<rect class="failed" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{failed_h:.1f}"/>'
            )
        parts.append("</g>")
    first, last = buckets[0].start, buckets[-1].start
    parts.append(f'<text x="{LEFT}" y="{HEIGHT - 4}" class="tick">{first:%H:%M}</text>')
    parts.append(
        f'<text x="{WIDTH - 8}" y="{HEIGHT - 4}" class="tick" text-anchor="end">{last:%H:%M} UTC</text>'
    )
    parts.append("</svg>")
    return "".join(parts)
