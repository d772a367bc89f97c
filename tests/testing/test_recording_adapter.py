"""RecordingAdapter: records the Job exactly as perform_later hands it to a queue."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime, timedelta, timezone

import pydantic
import pytest

from tests.testing.workers import EmailArgs, WelcomeEmail
from unified_jobs import Jobs
from unified_jobs.adapters.recording import RecordingAdapter
from unified_jobs.testing import recording


def test_records_the_serialized_job_and_runs_nothing(app: Jobs) -> None:
    with recording(app) as recorder:
        handle = WelcomeEmail.perform_later(EmailArgs(user_id=7), priority=3, queue="urgent")

    [job] = recorder.adapter.jobs
    assert job.id == handle.id
    assert job.name == WelcomeEmail.name
    assert job.queue == "urgent"
    assert job.priority == 3
    assert job.args_json == "[]"
    assert job.kwargs_json == EmailArgs(user_id=7).model_dump_json()
    assert json.loads(job.kwargs_json) == {"user_id": 7, "template": "welcome"}
    from tests.testing.workers import CALLS

    assert CALLS == []


def test_delays_are_recorded_not_waited_for(app: Jobs) -> None:
    at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    with recording(app) as recorder:
        WelcomeEmail.perform_later({"user_id": 1}, run_at=at)
        before = datetime.now(timezone.utc)
        WelcomeEmail.perform_later({"user_id": 2}, wait=timedelta(hours=1))

    first, second = recorder.adapter.jobs
    assert first.run_at == at
    assert second.run_at is not None
    assert second.run_at - before >= timedelta(minutes=59)
    assert RecordingAdapter.capabilities.delay and RecordingAdapter.capabilities.priority


def test_invalid_args_raise_and_nothing_is_recorded(app: Jobs) -> None:
    with recording(app) as recorder, pytest.raises(pydantic.ValidationError):
        WelcomeEmail.perform_later({"user_id": "not a number"})
    assert recorder.adapter.jobs == []


def test_aperform_later_records_too(app: Jobs) -> None:
    with recording(app) as recorder:
        handle = asyncio.run(WelcomeEmail.aperform_later({"user_id": 5}))
    assert [job.id for job in recorder.adapter.jobs] == [handle.id]


def test_thread_safe_enqueue() -> None:
    from unified_jobs.job import Job

    adapter = RecordingAdapter()

    def enqueue_many(thread: int) -> None:
        for n in range(250):
            adapter.enqueue(Job(id=f"{thread}-{n}", name="w", queue="q", kwargs_json="{}"))

    threads = [threading.Thread(target=enqueue_many, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [job.id for job in adapter.jobs]
    assert len(ids) == 2000
    assert len(set(ids)) == 2000
    # Each thread's jobs keep their order.
    assert [i for i in ids if i.startswith("3-")] == [f"3-{n}" for n in range(250)]


def test_take_and_clear() -> None:
    from unified_jobs.job import Job

    adapter = RecordingAdapter()
    for name in ("a", "b", "a"):
        adapter.enqueue(Job(id=f"{name}{len(adapter.jobs)}", name=name, queue="q", kwargs_json="{}"))
    taken = adapter.take(lambda job: job.name == "a")
    assert taken is not None and taken.id == "a0"
    assert adapter.take(lambda job: job.name == "c") is None
    assert [job.id for job in adapter.clear()] == ["b1", "a2"]
    assert adapter.jobs == []
