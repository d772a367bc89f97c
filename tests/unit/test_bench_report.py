"""``bench.peers.report``: uj-processes is ours, never the best peer, and gets its own ratio."""

from __future__ import annotations

from bench.peers.report import ratios, table


def _system(drain: float) -> dict[str, object]:
    return {"drain jobs/s": drain, "concurrency": "2", "bulk_api": None, "notes": []}


def test_processes_is_compared_with_the_peers_and_is_not_one() -> None:
    systems = {
        "unified_jobs": _system(1000.0),
        "uj-processes": _system(3000.0),
        "celery": _system(500.0),
        "huey": _system(2000.0),
    }
    assert ratios("drain jobs/s", systems) == (2.0, 0.5, "huey")
    assert ratios("drain jobs/s", systems, "uj-processes") == (6.0, 1.5, "huey")
    text = table("redis", {"systems": systems, "jobs": 10, "latency_jobs": 5})
    drain = next(line for line in text.splitlines() if line.startswith("drain jobs/s"))
    assert drain.rstrip().endswith("1.50 (huey)") and "0.50 (huey)" in drain
    assert "processes vs best peer" in text
