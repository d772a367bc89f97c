"""One suite, run against every adapter: what users may rely on whatever the mode."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ValidationError

from tests.contract.conftest import Harness
from tests.contract.contract_app import AsyncEcho, Echo, EchoArgs, Fail, Item
from unified_jobs import Worker
from unified_jobs.errors import NotRegisteredError


def test_handle_names_the_job(harness: Harness) -> None:
    first = Echo.perform_later({"n": 1})
    second = harness.jobs.perform_later(Echo, EchoArgs(n=2), queue="async")  # a queue workers consume
    assert isinstance(first.id, str) and first.id
    assert first.id != second.id
    assert (first.worker, first.queue) == ("contract.Echo", "default")
    assert (second.worker, second.queue) == ("contract.Echo", "async")
    recs = harness.wait_for_count(2)
    assert sorted(r["job"] for r in recs) == sorted([first.id, second.id])


def test_sync_job_gets_json_round_tripped_args_and_the_context(harness: Harness) -> None:
    args = EchoArgs(n=7, label="é ✓", items=[Item(sku="A-1", qty=2)], when="2026-01-01")
    handle = Echo.perform_later(args)
    if harness.runs.at_enqueue:
        assert len(harness.records()) == 1, "ForegroundBlocking runs the job before returning"
    if harness.runs.on_drain:
        assert harness.records() == [], "nothing runs until the test runs the queued jobs"
    (rec,) = harness.wait_for_count(1)
    assert rec["job"] == handle.id
    assert rec["args"] == {"n": 7, "label": "é ✓", "items": [{"sku": "A-1", "qty": 2}], "when": "2026-01-01"}
    assert rec["ctx"] == "contract-ctx"


def test_async_perform_runs(harness: Harness) -> None:
    handle = AsyncEcho.perform_later({"n": 3})
    assert handle.queue == "async"
    (rec,) = harness.wait_for_count(1)
    assert (rec["worker"], rec["job"], rec["args"]["n"]) == ("async_echo", handle.id, 3)


def test_aperform_later_from_a_running_loop(harness: Harness) -> None:
    async def enqueue() -> tuple[str, str]:
        a = await Echo.aperform_later({"n": 1})
        b = await AsyncEcho.aperform_later(EchoArgs(n=2))
        return a.id, b.id

    ids = asyncio.run(enqueue())
    recs = harness.wait_for_count(2)
    assert sorted(r["job"] for r in recs) == sorted(ids)


def test_invalid_args_raise_and_nothing_is_enqueued(harness: Harness) -> None:
    with pytest.raises(ValidationError):
        Echo.perform_later({"n": "not a number"})
    with pytest.raises(ValidationError):
        Echo.perform_later({"label": "n is missing"})

    class Other(BaseModel):
        n: int

    with pytest.raises(ValidationError):
        Echo.perform_later(Other(n=1))  # type: ignore[arg-type]
    Echo.perform_later({"n": 99})  # a sentinel: once it ran, anything enqueued before it would have too
    recs = harness.wait_for_count(1)
    assert [r["args"]["n"] for r in recs] == [99]


def test_dict_args_are_validated_and_coerced(harness: Harness) -> None:
    Echo.perform_later({"n": "5", "items": [{"sku": "B", "qty": "3"}]})
    (rec,) = harness.wait_for_count(1)
    assert rec["args"]["n"] == 5 and rec["args"]["items"] == [{"sku": "B", "qty": 3}]


def test_unregistered_worker_is_refused(harness: Harness) -> None:
    class Stray(Worker[EchoArgs]):
        def perform(self, args: EchoArgs) -> None:
            raise AssertionError("never runs")

    with pytest.raises(NotRegisteredError, match=r"jobs\.register\(.*Stray\)"):
        Stray.perform_later({"n": 1})
    with pytest.raises(NotRegisteredError, match=r"jobs\.register"):
        harness.jobs.perform_later(Stray, {"n": 1})


def test_a_failing_job_does_not_stop_later_jobs(harness: Harness) -> None:
    if harness.runs.at_enqueue:
        with pytest.raises(RuntimeError, match="job 1 failed on purpose"):
            Fail.perform_later({"n": 1})
    else:
        Fail.perform_later({"n": 1})
    Echo.perform_later({"n": 2})
    if harness.runs.on_drain:  # the error reaches the test's run; the later job waits for the next
        with pytest.raises(RuntimeError, match="job 1 failed on purpose"):
            harness.run_queued()
        assert [r["worker"] for r in harness.records()] == ["fail"]
    recs = harness.wait_for_count(2)
    assert sorted(r["worker"] for r in recs) == ["echo", "fail"]


def test_delay_is_honoured_where_supported(harness: Harness) -> None:
    wait = timedelta(seconds=1.5)
    before = datetime.now(timezone.utc)
    handle = Echo.perform_later({"n": 1}, wait=wait)
    assert handle.run_at is not None and handle.run_at >= before + wait
    later = Echo.perform_later({"n": 2}, run_at=before + wait)
    assert later.run_at == before + wait
    recs = harness.wait_for_count(2, timeout=20)
    started = min(r["at"] for r in recs)
    if harness.runs.waits:
        assert started >= (before + wait).timestamp() - 0.05, "a delayed job started early"
    else:
        assert started < (before + wait).timestamp(), f"{harness.backend} runs delayed jobs at once"


def test_many_jobs_each_run_exactly_once(harness: Harness) -> None:
    ids = [Echo.perform_later({"n": i}).id for i in range(200)]
    recs = harness.wait_for_count(200, timeout=60)
    assert sorted(r["job"] for r in recs) == sorted(ids)


def test_perform_all_later_enqueues_every_job_or_none(harness: Harness) -> None:
    with pytest.raises(ValidationError):
        Echo.perform_all_later([{"n": 1}, {"n": "two"}, {"n": 3}])
    handles = Echo.perform_all_later([{"n": i} for i in range(50)], queue="async")
    assert len({h.id for h in handles}) == 50 and {h.queue for h in handles} == {"async"}
    recs = harness.wait_for_count(50, timeout=30)
    assert sorted(r["job"] for r in recs) == sorted(h.id for h in handles)
    assert sorted(r["args"]["n"] for r in recs) == list(range(50))


def test_status_follows_the_job(harness: Harness) -> None:
    ok = Echo.perform_later({"n": 1})
    expected = {ok.id: "completed"}
    if not harness.runs.at_enqueue:  # inline, the failure is the caller's exception and there is no handle
        expected[Fail.perform_later({"n": 2}).id] = "failed"
    later = Echo.perform_later({"n": 3}, wait=timedelta(seconds=30))
    if harness.runs.on_drain:
        assert {k: harness.jobs.status(k) for k in expected} == dict.fromkeys(expected, "queued")
        assert harness.jobs.status(later) == "scheduled"
        with pytest.raises(RuntimeError, match="job 2 failed on purpose"):
            harness.run_queued()
    harness.wait_for_count(len(expected))
    deadline = time.monotonic() + 10
    while {k: harness.jobs.status(k) for k in expected} != expected and time.monotonic() < deadline:
        time.sleep(0.05)  # a worker writes its acks in batches
    assert {k: harness.jobs.status(k) for k in expected} == expected
    # where delays take no time, the delayed job has run too
    assert harness.jobs.status(later) == ("scheduled" if harness.runs.waits else "completed")
    assert harness.jobs.status("no-such-job") is None
    if harness.runs.waits:
        assert harness.jobs.cancel(later)  # not left for the pool's shutdown to wait for
