"""What the dashboard reads from a job store, the same on every backend: pages of jobs by
status with filters, counts, queue statistics, throughput, and ``run_now``."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.contract.conftest import Harness
from tests.contract.contract_app import AsyncEcho, Echo, Fail, LongAsync, Mail, PatientRetry, SlowRetry
from unified_jobs import JobHandle, JobInfo
from unified_jobs.core.monitor import JobPage, JobQuery

#: A queue no contract worker consumes: its jobs stay queued on the queue backends.
IDLE = "monitor-idle"
#: The places of the contract workers (and of the BackgroundAsync pool).
CONCURRENCY = 4


def poll(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """``check()`` once truthy, or its last value at ``timeout``; never runs recorded jobs
    (``Harness.wait_until`` would, and the jobs left waiting would run)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def page(harness: Harness, **query: Any) -> JobPage:
    return harness.jobs.adapter.store.jobs(JobQuery(**query))


def ids(harness: Harness, **query: Any) -> list[str]:
    return [info.id for info in page(harness, limit=1000, **query).jobs]


def status_is(harness: Harness, handle: JobHandle | str, status: str) -> Callable[[], bool]:
    return lambda: harness.jobs.status(handle) == status


def reach(harness: Harness, handle: JobHandle | str, status: str, timeout: float = 20.0) -> None:
    assert poll(status_is(harness, handle, status), timeout), (
        f"job {handle} did not become {status}: {harness.jobs.job(handle)}"
    )


def finish(harness: Harness, handles: list[JobHandle | str], timeout: float = 20.0) -> None:
    """Wait until these jobs ended (running the recorded ones where the test runs them)."""

    def ended() -> bool:
        return all(harness.jobs.status(h) in ("completed", "failed", "cancelled") for h in handles)

    if not harness.wait_until(ended, timeout):
        # Short (a whole JobInfo each is cut off in CI's output), then the worker's own account.
        states = [(i.id[:8], i.worker, i.status, i.attempts) for i in map(harness.jobs.job, handles) if i]
        pytest.fail(f"not ended after {timeout:g} s: {states}\n{harness.worker_log_tail()}")


def newest_first(infos: list[JobInfo]) -> bool:
    ends = [info.finished_at for info in infos]
    return all(a is not None and b is not None and a >= b for a, b in itertools.pairwise(ends))


def test_jobs_in_every_state_are_listed_counted_and_in_the_queue_stats(harness: Harness) -> None:
    jobs = harness.jobs
    store = jobs.adapter.store
    background = not harness.runs.at_enqueue and not harness.runs.on_drain
    mine: dict[str, list[str]] = {}
    # Ended ones first (the recorder runs every job it holds when asked).
    done = Echo.perform_later({"n": 1})
    failed = harness.run_failing(Fail, {"n": 2}, RuntimeError)
    finish(harness, [done, failed])
    mine["completed"], mine["failed"] = [done.id], [failed]
    if harness.runs.at_enqueue:  # nothing ever waits or runs in the background
        later = Echo.perform_later({"n": 3}, wait=timedelta(hours=1))
        mine["completed"].append(later.id)
    else:
        later = Echo.perform_later({"n": 3}, wait=timedelta(hours=1))
        dropped = Echo.perform_later({"n": 4}, wait=timedelta(hours=1))
        assert jobs.cancel(dropped)
        mine["scheduled"], mine["cancelled"] = [later.id], [dropped.id]
    running: list[JobHandle] = []
    retry: JobHandle | None = None
    if background:
        # Its second attempt waits 60 s: still retrying however slowly the next jobs start
        # (a 3 s wait ran out on a loaded machine); cancelled at the end.
        retry = PatientRetry.perform_later({"fail_times": 1})
        reach(harness, retry, "retrying")
        # Every place busy: on the in-process pool, that keeps the next jobs queued.
        running = [LongAsync.perform_later({"n": i, "seconds": 30}) for i in range(CONCURRENCY)]
        for handle in running:
            reach(harness, handle, "processing")
        mine["retrying"], mine["processing"] = [retry.id], [h.id for h in running]
    waiting: list[JobHandle] = []
    if not harness.runs.at_enqueue:
        waiting = [Echo.perform_later({"n": 10 + i}, queue=IDLE) for i in range(3)]
        mine["queued"] = [h.id for h in waiting]
    try:
        listed = {status: ids(harness, status=status) for status in mine}
        everything = set(ids(harness))
        for status, wanted in mine.items():
            assert set(wanted) <= set(listed[status]), f"{status}: {listed[status]} lacks some of {wanted}"
            assert set(wanted) <= everything
            for other in set(mine) - {status}:
                assert not set(wanted) & set(listed[other]), f"{status} jobs listed as {other}"
            assert store.status_counts().get(status, 0) >= len(wanted), (status, store.status_counts())
        if waiting:
            # Newest first: by enqueue time for queued jobs.
            assert [i for i in listed["queued"] if i in mine["queued"]] == mine["queued"][::-1]
            stats = {q.name: q for q in store.queue_stats()}
            idle = stats[IDLE]
            assert idle.queued == len(waiting) and idle.processing == idle.failed == 0, idle
            first = jobs.job(waiting[0])
            assert first is not None and first.enqueued_at is not None and idle.oldest_queued_at is not None
            assert abs((idle.oldest_queued_at - first.enqueued_at).total_seconds()) < 2, (idle, first)
            default = stats["default"]
            assert default.failed >= 1, default
            assert default.scheduled >= 1 + (retry is not None), default  # delayed, and the retry
            if running:
                assert default.processing >= len(running), default
    finally:
        for handle in running:
            jobs.cancel(handle)
        for job_id in mine.get("scheduled", []):
            jobs.cancel(job_id)  # the in-process pool would wait for it at shutdown
        if retry is not None:
            jobs.cancel(retry)  # its next attempt never runs
        if background:
            # Nothing of this test may still run in the next one (it would write its records);
            # the idle queue's jobs run only on the in-process pool.
            leftover: list[JobHandle | str] = [*running, *([retry] if retry else [])]
            if not harness.runs.in_worker_process:
                leftover += waiting
            finish(harness, leftover)


def test_pages_filter_by_worker_queue_and_text_and_page_on(harness: Harness) -> None:
    token = uuid.uuid4().hex[:12]
    echoes = [Echo.perform_later({"n": i, "label": f"{token}-echo"}) for i in range(5)]
    mail = Mail.perform_later({"n": 9, "label": f"{token}-Needle"})
    other = AsyncEcho.perform_later({"n": 8, "label": f"{token}-async"})
    finish(harness, [*echoes, mail, other])
    by_worker = page(harness, status="completed", worker="contract.Echo", text=token, limit=100)
    assert {i.id for i in by_worker.jobs} == {h.id for h in echoes} and not by_worker.more
    assert newest_first(by_worker.jobs), [i.finished_at for i in by_worker.jobs]
    assert all(i.status == "completed" and i.worker == "contract.Echo" for i in by_worker.jobs)
    assert ids(harness, queue="mail", text=token) == [mail.id]
    assert ids(harness, queue="async", worker="contract.AsyncEcho", text=token) == [other.id]
    assert ids(harness, text=f"{token}-NEEDLE") == [mail.id], "text is case-insensitive"
    assert ids(harness, text=f"{token}-nowhere") == []
    assert ids(harness, status="failed", text=token) == []
    assert ids(harness, worker="contract.NoSuchWorker") == []
    seen: list[str] = []
    offsets = (0, 2, 4)
    for offset in offsets:
        part = page(harness, worker="contract.Echo", text=token, limit=2, offset=offset)
        assert part.more is (offset != offsets[-1]), (offset, part)
        assert part.searched is None
        seen += [i.id for i in part.jobs]
    assert sorted(seen) == sorted(h.id for h in echoes), "pages neither overlap nor skip"
    info = page(harness, queue="mail", text=token).jobs[0]
    assert info.args == {"n": 9, "label": f"{token}-Needle", "items": [], "when": None}
    assert info.queue == "mail" and info.finished_at is not None


def test_throughput_counts_the_jobs_that_ended_each_minute(harness: Harness) -> None:
    store = harness.jobs.adapter.store

    def totals() -> tuple[int, int]:
        buckets = store.throughput(5)
        return sum(b.completed for b in buckets), sum(b.failed for b in buckets)

    before = totals()
    ended = [Echo.perform_later({"n": i}) for i in range(3)]
    failed = harness.run_failing(Fail, {"n": 9}, RuntimeError)
    finish(harness, [*ended, failed])
    assert poll(lambda: totals()[0] >= before[0] + 3 and totals()[1] >= before[1] + 1, 5), (before, totals())
    buckets = store.throughput(5)
    assert len(buckets) == 5
    starts = [b.start for b in buckets]
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(starts)), starts
    now = datetime.now(timezone.utc)
    assert starts[-1] <= now < starts[-1] + timedelta(minutes=1), (starts[-1], now)
    assert len(store.throughput(1)) == 1


def test_run_now_runs_a_waiting_job_now(harness: Harness) -> None:
    jobs = harness.jobs
    handle = Echo.perform_later({"n": 1}, wait=timedelta(hours=1))
    if not jobs.adapter.can_run_now:
        # Nothing waits (ForegroundBlocking), or the waiting message is out of the store's
        # reach (RabbitMQ's delay queues).
        assert jobs.run_now(handle) is False
        if jobs.status(handle) == "scheduled":
            assert jobs.cancel(handle)
        return
    assert jobs.status(handle) == "scheduled"
    assert jobs.run_now(handle) is True
    assert jobs.status(handle) in ("queued", "processing", "completed")
    assert jobs.run_now(handle) is False, "it no longer waits"
    finish(harness, [handle], timeout=15)
    assert jobs.status(handle) == "completed"
    assert [r["job"] for r in harness.records()] == [handle.id]
    assert jobs.run_now(handle) is False, "a completed job does not wait"
    assert jobs.run_now("no-such-job") is False
    if not harness.runs.waits:
        return
    retry = SlowRetry.perform_later({"fail_times": 1})  # the second attempt would wait 3 s
    reach(harness, retry, "retrying")
    started = time.monotonic()
    assert jobs.run_now(retry) is True
    info = jobs.job(retry)
    assert info is not None and info.status in ("retrying", "processing", "completed"), info
    finish(harness, [retry], timeout=15)
    assert time.monotonic() - started < 2.5, "the retry ran when its backoff was over, not now"
    info = jobs.job(retry)
    assert info is not None and info.status == "completed" and info.attempts == 2, info


def test_run_now_is_false_for_a_job_that_does_not_wait(harness: Harness) -> None:
    if harness.runs.at_enqueue:
        pytest.skip(f"{harness.backend} runs every job {harness.runs.where}: none ever waits")
    dropped = Echo.perform_later({"n": 1}, wait=timedelta(hours=1))
    assert harness.jobs.cancel(dropped)
    assert harness.jobs.run_now(dropped) is False, "a cancelled job never runs"
    assert harness.jobs.status(dropped) == "cancelled"
    if harness.runs.in_worker_process or harness.runs.on_drain:  # nobody takes the idle queue's jobs
        queued = Echo.perform_later({"n": 2}, queue=IDLE)
        assert harness.jobs.run_now(queued) is False, "a queued job is due already"
        assert harness.jobs.status(queued) == "queued"
