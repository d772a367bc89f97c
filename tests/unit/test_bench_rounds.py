"""``bench_peers --rounds``: each figure of a system is the median of its rounds."""

from __future__ import annotations

from bench.bench_peers import combine


def test_each_number_is_the_median_of_the_rounds_and_the_rest_is_kept() -> None:
    rounds = [
        {
            "concurrency": "prefork",
            "enqueue jobs/s": 100.0,
            "drain jobs/s": None,
            "latency p50 ms": 3.0,
            "notes": [],
        },
        {
            "concurrency": "prefork",
            "enqueue jobs/s": 300.0,
            "drain jobs/s": 50.0,
            "latency p50 ms": 1.0,
            "notes": ["x"],
        },
        {
            "concurrency": "prefork",
            "enqueue jobs/s": 200.0,
            "drain jobs/s": 70.0,
            "latency p50 ms": 2.0,
            "notes": [],
        },
    ]
    got = combine(rounds)
    assert got["enqueue jobs/s"] == 200.0
    assert got["drain jobs/s"] == 60.0, "a round without the figure (None) is left out of its median"
    assert got["latency p50 ms"] == 2.0
    assert got["concurrency"] == "prefork"
    assert got["notes"] == ["round 2: x"]
    assert [r["enqueue jobs/s"] for r in got["rounds"]] == [100.0, 300.0, 200.0]


def test_one_round_is_reported_as_it_was_measured() -> None:
    only = {"enqueue jobs/s": 100.0, "notes": []}
    assert combine([only]) is only


def test_a_figure_no_round_has_stays_none() -> None:
    got = combine([{"bulk enqueue jobs/s": None, "notes": []}, {"bulk enqueue jobs/s": None, "notes": []}])
    assert got["bulk enqueue jobs/s"] is None
