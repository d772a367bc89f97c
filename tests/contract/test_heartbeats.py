"""Worker liveness, the same on every backend: whatever runs the jobs (a worker process, the
in-process pool) writes a heartbeat into the job store that the app reads, saying which
queues it takes, how many slots it has, which jobs it runs now, and when it last polled.

A beat comes every ``workers.heartbeat_interval`` seconds, so each wait here is a few of them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.contract.conftest import CONTRACT_QUEUES, Harness
from tests.contract.contract_app import Echo, Sleep
from unified_jobs.core.heartbeat import IN_PROCESS, is_alive
from unified_jobs.core.monitor import WorkerBeat

#: The harness runs every pool, in process or not, with four slots.
SLOTS = 4


def interval(harness: Harness) -> float:
    return harness.jobs.config.workers.heartbeat_interval


def live_beat(harness: Harness, check: Callable[[WorkerBeat], bool]) -> WorkerBeat | None:
    """The live beat of the backend's worker, if it passes ``check``."""
    for beat in harness.jobs.adapter.store.workers():
        if is_alive(beat) and "default" in beat.queues and check(beat):
            return beat
    return None


def wait_for_beat(harness: Harness, check: Callable[[WorkerBeat], bool], what: str) -> WorkerBeat:
    # The harness empties a Redis store before each test, beats included: the next one shows.
    timeout = 2 * interval(harness) + 5
    beat = harness.wait_until(lambda: live_beat(harness, check), timeout=timeout)
    shown = [(b.id, b.queues, b.current, b.polled_at) for b in harness.jobs.adapter.store.workers()]
    assert beat, f"{harness.backend}: no live beat {what} within {timeout:g} s: {shown}"
    return beat  # type: ignore[no-any-return]


def test_a_worker_beat_shows_its_queues_slots_and_polls(harness: Harness) -> None:
    Echo.perform_later({"n": 1})  # the in-process pool starts (and beats) with its first job
    harness.wait_for_count(1)
    if harness.runs.in_callers_thread:
        assert harness.jobs.adapter.store.workers() == [], (
            f"{harness.backend} runs jobs {harness.runs.where}: no worker, so no heartbeat"
        )
        return
    polls = harness.runs.in_worker_process
    beat = wait_for_beat(harness, lambda b: not polls or b.polled_at is not None, "(that polled)")
    assert set(CONTRACT_QUEUES) <= set(beat.queues)
    if harness.runs.beats_per_process:  # SLOTS processes of one slot each, on one host

        def processes() -> list[WorkerBeat]:
            return [b for b in harness.jobs.adapter.store.workers() if is_alive(b) and "default" in b.queues]

        beats = harness.wait_until(lambda: len(processes()) == SLOTS and processes(), timeout=10)
        assert beats, f"{harness.backend}: {len(processes())} live beats, not one per process ({SLOTS})"
        assert [b.concurrency for b in beats] == [1] * SLOTS
        assert len({b.pid for b in beats}) == SLOTS and len({b.host for b in beats}) == 1
    else:
        assert beat.concurrency == SLOTS
    assert beat.interval == interval(harness)
    assert beat.started_at <= beat.beat_at
    if harness.runs.in_worker_process:
        assert beat.kind == "worker"
        # An idle worker asks its queues for jobs every second or two (on RabbitMQ, which
        # pushes: its event loop finds its consumer in place), and the beat says when.
        assert beat.polled_at is not None
        assert (beat.beat_at - beat.polled_at).total_seconds() < 5
    else:
        assert beat.kind == IN_PROCESS
        assert beat.polled_at is None, "the in-process pool takes jobs from memory: it never polls"


def test_a_beat_lists_the_jobs_running_now(harness: Harness) -> None:
    if harness.runs.in_callers_thread:
        pytest.skip(f"{harness.backend} runs each job {harness.runs.where}: no worker reports it")
    # Long enough to be running at the next beat, whenever in the interval it starts.
    seconds = interval(harness) + 1.5
    handle = Sleep.perform_later({"n": 1, "seconds": seconds})
    assert harness.wait_until(lambda: any(r["job"] == handle.id for r in harness.records()), timeout=20)
    beat = wait_for_beat(harness, lambda b: handle.id in b.current, f"listing job {handle.id}")
    assert len(beat.current) <= beat.concurrency
    ended = harness.wait_until(lambda: any(r["worker"] == "sleep_end" for r in harness.records()), timeout=30)
    assert ended, f"job {handle.id} did not end"
    wait_for_beat(harness, lambda b: handle.id not in b.current, f"no longer listing job {handle.id}")
