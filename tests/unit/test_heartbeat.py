"""What a heartbeat says (``core.heartbeat``): alive or gone, stalled or busy, and the beat as
JSON; and the heartbeat thread, which writes beats and removes them on a clean stop."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.procs import wait_until
from unified_jobs.adapters.heartbeat import Heartbeat, heartbeat_path
from unified_jobs.adapters.memory_store import MemoryJobStore
from unified_jobs.core.heartbeat import IN_PROCESS, STOPPING, beat_from_json, beat_to_json, judge
from unified_jobs.core.monitor import WorkerBeat

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def beat(poll_gap: float | None = 1.0, *, age: float = 0.0, busy: int = 0, **changes: object) -> WorkerBeat:
    at = NOW - timedelta(seconds=age)
    made = WorkerBeat(
        id="celery@h:1",
        host="h",
        pid=1,
        queues=("default",),
        concurrency=2,
        current=tuple(f"job-{n}" for n in range(busy)),
        started_at=at - timedelta(minutes=5),
        beat_at=at,
        polled_at=None if poll_gap is None else at - timedelta(seconds=poll_gap),
        interval=10.0,
    )
    return replace(made, **changes)  # type: ignore[arg-type]


def test_a_worker_that_polls_is_ok() -> None:
    assert judge(beat(1.0), stale_after=30, now=NOW).verdict == "ok"


def test_a_worker_that_stopped_polling_with_a_free_slot_is_stalled() -> None:
    liveness = judge(beat(45.0, busy=1), stale_after=30, now=NOW)
    assert liveness.verdict == "stalled" and liveness.failing
    assert (
        liveness.reason
        == "has not asked its queues for jobs for 45 s (more than 30 s) while 1 of its 2 slots are free"
    )


def test_a_worker_whose_every_slot_is_busy_is_not_stalled() -> None:
    liveness = judge(beat(45.0, busy=2), stale_after=30, now=NOW)
    assert liveness.verdict == "busy" and not liveness.failing


def test_the_poll_gap_is_measured_on_the_workers_clock() -> None:
    # A reader whose clock is 20 s ahead sees an old beat, not a stalled worker.
    skewed = judge(beat(1.0), stale_after=10, now=NOW + timedelta(seconds=20))
    assert skewed.verdict == "ok" and skewed.poll_gap == pytest.approx(1.0)


def test_a_worker_that_never_polled_counts_from_its_start() -> None:
    assert judge(beat(None), stale_after=30, now=NOW).verdict == "stalled"  # started 5 min ago
    assert judge(beat(None, started_at=NOW - timedelta(seconds=5)), stale_after=30, now=NOW).verdict == "ok"


def test_an_old_beat_is_a_gone_worker_and_fails_nothing() -> None:
    gone = judge(beat(1.0, age=26.0), stale_after=30, now=NOW)  # over 2 intervals + 5 s
    assert gone.verdict == "gone" and not gone.failing
    assert judge(beat(1.0, age=24.0), stale_after=30, now=NOW).verdict == "ok"


def test_a_stopping_worker_and_an_in_process_pool_are_never_stalled() -> None:
    assert judge(beat(90.0, extra={"state": STOPPING}), stale_after=30, now=NOW).verdict == "stopping"
    assert judge(beat(None, kind=IN_PROCESS), stale_after=30, now=NOW).verdict == "ok"


def test_a_beat_survives_json() -> None:
    original = beat(3.0, busy=1, extra={"node": "celery@h"})
    assert beat_from_json(json.loads(json.dumps(beat_to_json(original)))) == original
    with pytest.raises(KeyError):
        beat_from_json({"id": "x"})


def test_the_thread_writes_the_store_and_the_file_and_a_clean_stop_removes_both(tmp_path: Path) -> None:
    store = MemoryJobStore()
    path = heartbeat_path(str(tmp_path / "beat-{pid}.json"))
    assert path is not None and "{pid}" not in path.name
    made = iter(range(1000))

    def make() -> WorkerBeat:
        return beat(1.0, beat_at=datetime.now(timezone.utc), pid=next(made))

    heartbeat = Heartbeat(store, make, interval=0.05, path=path).start()
    assert wait_until(lambda: bool(store.workers()) and store.workers()[0].pid >= 2, timeout=5)
    assert beat_from_json(json.loads(path.read_text())).id == "celery@h:1"
    heartbeat.stop()
    assert store.workers() == [] and not path.exists()
