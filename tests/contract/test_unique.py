"""Unique jobs, the same on every backend: while a job holding a key waits or runs, enqueueing
another with that key returns the first one's handle and enqueues nothing; the key is free again
once the job ends (completed, failed, cancelled) or its ``unique_for`` is past."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest

from tests.contract.conftest import Harness
from tests.contract.contract_app import BrieflyUnique, Echo, Fail, UniqueEcho, UniqueFail
from unified_jobs.errors import InvalidOptionError

LATER = timedelta(minutes=1)


def runs_of(harness: Harness, job_id: str) -> list[dict[str, object]]:
    return [r for r in harness.records() if r["job"] == job_id]


def test_a_waiting_job_holds_its_key(harness: Harness) -> None:
    first = Echo.perform_later({"n": 1}, unique_key="order-1", wait=LATER)
    second = Echo.perform_later({"n": 2}, unique_key="order-1", wait=LATER)
    other = Echo.perform_later({"n": 3}, unique_key="order-2", wait=LATER)
    if harness.runs.at_enqueue:
        # The job ran before perform_later returned, and its key was free again.
        assert len({first.id, second.id, other.id}) == 3
        assert [r["args"]["n"] for r in harness.wait_for_count(3)] == [1, 2, 3]
        return
    assert (second.id, second.worker, second.queue) == (first.id, first.worker, first.queue), (
        "the second job is the first one's handle"
    )
    assert other.id != first.id, "another key is another job"
    assert harness.jobs.status(first) == "scheduled"
    assert harness.jobs.cancel(first)  # a cancelled job holds nothing
    third = Echo.perform_later({"n": 4}, unique_key="order-1", wait=LATER)
    assert third.id not in (first.id, other.id)
    assert harness.jobs.status(third) == "scheduled"
    for handle in (other, third):
        assert harness.jobs.cancel(handle)


def test_a_unique_key_must_be_a_non_empty_string(harness: Harness) -> None:
    with pytest.raises(InvalidOptionError, match="unique_key= takes a non-empty string"):
        Echo.perform_later({"n": 1}, unique_key="")
    assert harness.records() == []


def test_1000_calls_from_4_threads_enqueue_one_job(harness: Harness) -> None:
    if harness.runs.at_enqueue:
        pytest.skip(f"jobs run {harness.runs.where}: each releases its key before the next call")
    handles: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def enqueue() -> None:
        start.wait()
        mine = [UniqueEcho.perform_later({"n": 42}, wait=LATER).id for _ in range(250)]
        with lock:
            handles.extend(mine)

    threads = [threading.Thread(target=enqueue) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(handles) == 1000
    assert len(set(handles)) == 1, f"{len(set(handles))} jobs were enqueued"
    (job_id,) = set(handles)
    assert harness.jobs.status(job_id) == "scheduled"
    assert harness.jobs.cancel(job_id)


def test_the_key_is_free_once_the_job_completed(harness: Harness) -> None:
    first = UniqueEcho.perform_later({"n": 5})

    def completed() -> bool:
        return harness.jobs.status(first) == "completed"

    assert harness.wait_until(completed), f"the job did not complete: {harness.jobs.job(first)}"
    second = UniqueEcho.perform_later({"n": 5})
    assert second.id != first.id
    recs = harness.wait_for_count(2)
    assert [r["job"] for r in recs] == [first.id, second.id]


def test_the_key_is_held_through_retries_and_freed_when_the_job_ends(harness: Harness) -> None:
    first = UniqueFail.perform_later({"n": 6})
    if harness.runs.waits:  # elsewhere the retry runs at once: there is no wait to observe
        retrying = harness.wait_until(lambda: harness.jobs.status(first) == "retrying")
        assert retrying, f"the job is not retrying: {harness.jobs.job(first)}"
        assert UniqueFail.perform_later({"n": 6}).id == first.id, "a retrying job still holds its key"

    def completed() -> bool:
        return harness.jobs.status(first) == "completed"

    assert harness.wait_until(completed), f"the job did not complete: {harness.jobs.job(first)}"
    assert [r["attempt"] for r in runs_of(harness, first.id)] == [1, 2]
    again = UniqueFail.perform_later({"n": 6})
    assert again.id != first.id
    harness.wait_until(lambda: len(runs_of(harness, again.id)) == 2)
    assert len(runs_of(harness, again.id)) == 2


def test_a_failed_job_frees_its_key(harness: Harness) -> None:
    first = harness.run_failing(Fail, {"n": 7}, RuntimeError, "job 7 failed on purpose")
    # run_failing enqueues without a key: enqueue the same failure with one.
    keyed = Fail.perform_later({"n": 8}, unique_key="fails") if not harness.runs.at_enqueue else None
    if keyed is None:
        with pytest.raises(RuntimeError):
            Fail.perform_later({"n": 8}, unique_key="fails")
        keyed_id = {f.id for f in harness.jobs.failed(Fail)} - {first}
        assert len(keyed_id) == 1
    else:
        if harness.runs.raises:
            with pytest.raises(RuntimeError):
                harness.run_queued()
        keyed_id = {keyed.id}

    def failed() -> bool:
        return all(harness.jobs.status(job_id) == "failed" for job_id in keyed_id)

    assert harness.wait_until(failed)
    if harness.runs.at_enqueue:
        with pytest.raises(RuntimeError):
            Fail.perform_later({"n": 9}, unique_key="fails")
        return
    again = Fail.perform_later({"n": 9}, unique_key="fails", wait=LATER)
    assert again.id not in keyed_id, "the failed job's key was free"
    assert harness.jobs.cancel(again)


def test_the_key_expires_after_unique_for(harness: Harness) -> None:
    first = BrieflyUnique.perform_later({"n": 10}, wait=LATER)
    second = BrieflyUnique.perform_later({"n": 10}, wait=LATER)
    if harness.runs.at_enqueue:
        assert second.id != first.id
        return
    assert second.id == first.id
    time.sleep(2.3)  # unique_for is two seconds
    third = BrieflyUnique.perform_later({"n": 10}, wait=LATER)
    assert third.id != first.id, "the key expired, though its job still waits"
    assert harness.jobs.status(first) == "scheduled", "expiry frees the key, it does not touch the job"
    for handle in (first, third):
        assert harness.jobs.cancel(handle)


def test_aperform_later_with_a_unique_key(harness: Harness) -> None:
    async def enqueue() -> tuple[str, str]:
        first = await Echo.aperform_later({"n": 20}, unique_key="async-1", wait=LATER)
        second = await Echo.aperform_later({"n": 21}, unique_key="async-1", wait=LATER)
        return first.id, second.id

    first, second = asyncio.run(enqueue())
    if harness.runs.at_enqueue:
        assert first != second
        assert [r["args"]["n"] for r in harness.wait_for_count(2)] == [20, 21]
        return
    assert second == first
    assert harness.jobs.cancel(first)


def test_perform_all_later_gives_duplicates_the_first_ones_handle(harness: Harness) -> None:
    handles = UniqueEcho.perform_all_later([{"n": 11}, {"n": 11}, {"n": 12}], wait=LATER)
    # The batch takes its keys before any of it runs, so a duplicate in it is the same job
    # even where jobs run at once.
    assert handles[0].id == handles[1].id
    assert handles[2].id != handles[0].id
    if harness.runs.at_enqueue:
        assert sorted(r["n"] for r in harness.records()) == [11, 12]
        return
    again = UniqueEcho.perform_all_later([{"n": 12}, {"n": 13}], wait=LATER)
    assert again[0].id == handles[2].id, "already waiting from the first batch"
    for job_id in {handles[0].id, handles[2].id, again[1].id}:
        assert harness.jobs.cancel(job_id)
