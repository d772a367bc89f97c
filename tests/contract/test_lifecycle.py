"""A job's life, the same on every backend: retries, backoff, time limits, dying workers,
``discard_on``, the failed store and cancellation (DESIGN.md's per-mode table)."""

from __future__ import annotations

import itertools
import time
from datetime import timedelta
from typing import Any

import pytest

from tests.contract.conftest import Harness
from tests.contract.contract_app import (
    Discarding,
    Echo,
    Exiting,
    FailsUntil,
    Flaky,
    FlakyTwice,
    Limited,
    LongAsync,
    SlowRetry,
    Stuck,
)
from unified_jobs import JobInfo
from unified_jobs.errors import TimeLimitExceeded


def settled(harness: Harness, job_id: str, status: str, timeout: float = 20.0) -> JobInfo:
    def reached() -> JobInfo | None:
        info = harness.jobs.job(job_id)
        return info if info is not None and info.status == status else None

    info = harness.wait_until(reached, timeout)
    assert info, f"job {job_id} did not become {status}: {harness.jobs.job(job_id)}"
    return info  # type: ignore[no-any-return]


def runs_of(harness: Harness, job_id: str) -> list[dict[str, Any]]:
    return [r for r in harness.records() if r["job"] == job_id]


def test_a_job_that_fails_twice_then_succeeds_runs_three_times(harness: Harness) -> None:
    handle = Flaky.perform_later({"fail_times": 2})
    info = settled(harness, handle.id, "completed")
    assert [r["attempt"] for r in runs_of(harness, handle.id)] == [1, 2, 3]
    assert info.attempts == 3


def test_a_job_out_of_attempts_is_failed_with_its_traceback(harness: Harness) -> None:
    job_id = harness.run_failing(
        FlakyTwice, {"fail_times": 5}, ConnectionError, "attempt 2 failed on purpose"
    )
    failed = settled(harness, job_id, "failed")
    assert [r["attempt"] for r in runs_of(harness, job_id)] == [1, 2]
    assert failed.attempts == 2
    assert failed.last_error is not None and failed.last_error.startswith("ConnectionError: attempt 2 failed")
    assert failed.traceback is not None
    assert "Traceback" in failed.traceback and "ConnectionError" in failed.traceback
    assert failed.error_class == "builtins.ConnectionError" and failed.result is None
    listed = harness.wait_until(lambda: [f for f in harness.jobs.failed(worker=FlakyTwice) if f.id == job_id])
    assert listed and listed[0].worker == "contract.FlakyTwice" and listed[0].args == {"fail_times": 5}
    assert harness.jobs.failed(worker="contract.Echo") == []


def test_retries_wait_at_least_the_backoff(harness: Harness) -> None:
    handle = Flaky.perform_later({"fail_times": 2})  # waits 0.3 s, then 0.6 s
    settled(harness, handle.id, "completed")
    at = [r["at"] for r in runs_of(harness, handle.id)]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    if not harness.runs.waits:
        assert all(g < 0.3 for g in gaps), f"{harness.backend} retries at once: {gaps}"
    else:
        assert gaps[0] >= 0.3 - 0.02 and gaps[1] >= 0.6 - 0.02, f"retried too early: {gaps}"


def test_a_waiting_retry_is_retrying(harness: Harness) -> None:
    if not harness.runs.waits:
        SlowRetry.perform_later({"fail_times": 1})  # no waiting: done at once once the job runs
        harness.run_queued()
        assert [r["attempt"] for r in harness.records()] == [1, 2]
        return
    handle = SlowRetry.perform_later({"fail_times": 1})
    info = settled(harness, handle.id, "retrying", timeout=10)
    assert info.last_error is not None and "attempt 1 failed" in info.last_error
    assert info.error_class == "builtins.ConnectionError"
    assert info.run_at is not None
    settled(harness, handle.id, "completed")


def test_an_attempt_over_its_time_limit_fails_and_is_retried_per_policy(harness: Harness) -> None:
    started = time.monotonic()
    job_id = harness.run_failing(Limited, {"n": 1}, TimeLimitExceeded)
    info = settled(harness, job_id, "failed", timeout=30)
    assert time.monotonic() - started < 15, "the limit did not stop the attempt"
    assert info.last_error is not None and "TimeLimitExceeded" in info.last_error
    assert info.error_class == "unified_jobs.errors.TimeLimitExceeded"
    time.sleep(1.0)  # nothing more arrives
    runs = runs_of(harness, info.id)
    assert [r["worker"] for r in runs] == ["contract.Limited"] * 2


def test_an_attempt_stuck_past_its_hard_time_limit_is_killed_and_fails(harness: Harness) -> None:
    if not harness.runs.in_worker_process:
        pytest.skip(
            f"{harness.backend} runs jobs {harness.runs.where}: a job stuck in one C call cannot be "
            "stopped there; only a worker process can be killed"
        )
    started = time.monotonic()
    handle = Stuck.perform_later({"n": 1})
    info = settled(harness, handle.id, "failed", timeout=30)
    took = time.monotonic() - started
    assert 5.0 < took < 15, f"failed after {took:.1f} s: the hard limit is time_limit (0.5 s) plus 5 s"
    assert info.last_error is not None and "TimeLimitExceeded" in info.last_error, info.last_error
    # The worker goes on (its killed process replaced), and the stuck job never runs again.
    after = Echo.perform_later({"n": 2})
    settled(harness, after.id, "completed", timeout=30)
    time.sleep(1.0)
    assert [r["worker"] for r in runs_of(harness, handle.id)] == ["contract.Stuck"]
    assert harness.jobs.job(handle.id).status == "failed"


def test_a_job_whose_worker_process_dies_is_delivered_at_most_max_deliveries_times(harness: Harness) -> None:
    if not harness.runs.in_worker_process:
        pytest.skip(
            f"{harness.backend} runs jobs {harness.runs.where}: os._exit would end the test run; "
            "only queue workers survive it"
        )
    handle = Exiting.perform_later({"n": 1})
    info = settled(harness, handle.id, "failed", timeout=60)
    assert info.last_error is not None and "WorkerLost" in info.last_error, info.last_error
    assert info.error_class is None  # what the process died of is unknown
    time.sleep(1.0)
    assert 1 <= len(runs_of(harness, handle.id)) <= 3  # workers.max_deliveries defaults to 3


def test_discard_on_fails_at_once(harness: Harness) -> None:
    info = settled(harness, harness.run_failing(Discarding, {"n": 1}, ValueError, "can never work"), "failed")
    assert info.attempts == 1 and len(runs_of(harness, info.id)) == 1
    assert info.last_error is not None and info.last_error.startswith("ValueError: this input can never work")
    assert info.error_class == "builtins.ValueError"


def test_a_failed_job_can_be_retried_and_discarded(harness: Harness) -> None:
    job_id = harness.run_failing(FailsUntil, {"fail_times": 2}, ConnectionError)
    settled(harness, job_id, "failed")
    assert harness.jobs.retry(job_id)  # the third run succeeds
    settled(harness, job_id, "completed")
    assert len(runs_of(harness, job_id)) == 3
    assert not harness.jobs.retry(job_id), "only a failed job is retried"
    assert not harness.jobs.discard(job_id), "a completed job is not discarded"
    other = harness.run_failing(FailsUntil, {"fail_times": 9}, ConnectionError)
    settled(harness, other, "failed")
    assert harness.jobs.discard(other)
    assert harness.jobs.job(other) is None and other not in {f.id for f in harness.jobs.failed()}


def test_a_cancelled_waiting_job_never_runs(harness: Harness) -> None:
    if harness.runs.at_enqueue:
        pytest.skip(f"{harness.backend} runs every job {harness.runs.where}: none ever waits")
    handle = Echo.perform_later({"n": 1}, wait=timedelta(seconds=1.5))
    assert harness.jobs.status(handle) == "scheduled"
    assert harness.jobs.cancel(handle)
    assert harness.jobs.status(handle) == "cancelled"
    sentinel = Echo.perform_later({"n": 2}, wait=timedelta(seconds=2))
    harness.wait_for_count(1, timeout=20)
    time.sleep(0.3)
    assert [r["job"] for r in harness.records()] == [sentinel.id]
    assert harness.jobs.status(handle) == "cancelled"
    assert not harness.jobs.cancel(sentinel), "a finished job cannot be cancelled"


def test_a_cancelled_job_discarded_while_it_waits_never_runs(harness: Harness) -> None:
    if harness.runs.at_enqueue:
        pytest.skip(f"{harness.backend} runs every job {harness.runs.where}: none ever waits")
    handle = Echo.perform_later({"n": 1}, wait=timedelta(seconds=1))
    assert harness.jobs.cancel(handle)
    assert harness.jobs.discard(handle)
    assert harness.jobs.job(handle) is None  # gone from the store, as discard says
    sentinel = Echo.perform_later({"n": 2}, wait=timedelta(seconds=1.5))
    harness.wait_for_count(1, timeout=20)
    time.sleep(0.3)
    assert [r["job"] for r in harness.records()] == [sentinel.id]
    assert harness.jobs.job(handle) is None


def test_cancelling_a_running_async_job_stops_it_where_supported(harness: Harness) -> None:
    if harness.runs.in_callers_thread:
        pytest.skip(
            f"{harness.backend} runs each job {harness.runs.where}, to its end: nothing can "
            "cancel it while it runs"
        )
    handle = LongAsync.perform_later({"n": 1, "seconds": 8})
    assert harness.wait_until(lambda: runs_of(harness, handle.id), timeout=20)
    supported = harness.jobs.adapter.capabilities.cancel_running
    assert harness.jobs.cancel(handle) is supported
    if not supported:
        return
    settled(harness, handle.id, "cancelled", timeout=10)
    time.sleep(0.5)
    assert [r["worker"] for r in runs_of(harness, handle.id)] == ["long_start"]
