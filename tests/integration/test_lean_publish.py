"""The Redis kind builds a job's message itself (``adapters/celery/lean_publish.py``) and pushes
it with the job's record in one command. The message must be the one Celery's ``send_task``
pushes for the same job, field by field, so that ``celery worker``, Flower and every tool that
reads Celery's protocol see no difference; and where the app's settings could make Celery
publish differently, ``send_task`` publishes it, as before. On a Redis of the test's own."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.contract.contract_app import Echo, Limited, Mail, create_app
from tests.procs import PrivateRedis
from unified_jobs import Jobs
from unified_jobs.adapters.celery.kinds.redis_transport import Rider, riding

#: Differ from job to job (ids, the process), not from path to path.
PER_JOB = {"id", "root_id", "correlation_id", "delivery_tag"}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[Jobs, Any]]:
    server = PrivateRedis(tmp_path)
    config = {"workers": {"mode": "BackgroundQueue"}, "queue": {"kind": "Redis", "uri": server.url}}
    jobs = create_app(config, str(tmp_path / "record.jsonl"))
    try:
        yield jobs, redis.Redis.from_url(server.url)
    finally:
        jobs.shutdown()
        server.stop()


def _pushed(client: Any, per_job: set[str] = PER_JOB) -> list[dict[str, Any]]:
    """Every message in every list, oldest first, its body decoded, the per-job fields out."""
    found = []
    for key in sorted(client.keys("*")):
        if client.type(key) != b"list":
            continue
        for raw in reversed(client.lrange(key, 0, -1)):
            message = json.loads(raw)
            message["body"] = json.loads(base64.b64decode(message["body"]))
            message["list"] = key.decode()
            for part in (message["headers"], message["properties"]):
                for field in per_job & set(part):
                    part[field] = "-"
            found.append(message)
    return found


def _job(jobs: Jobs, worker: Any, args: dict[str, Any], priority: int | None = None) -> Any:
    return jobs._build_job(worker, args, wait=None, run_at=None, queue=None, priority=priority)


def _through_send_task(jobs: Jobs, worker: Any, args: dict[str, Any], **options: Any) -> None:
    """What ``perform_later`` published before the lean path: Celery's ``send_task`` (with the
    record riding along)."""
    adapter: Any = jobs._adapter
    job = _job(jobs, worker, args, **options)
    with riding(Rider(lambda pipe: adapter.store.add_enqueued(pipe, [job]))):
        adapter._publish(job)


@pytest.mark.parametrize(
    ("worker", "args", "options"),
    [
        (Echo, {"n": 1}, {}),
        (Echo, {"n": 2}, {"priority": 3}),
        (Mail, {"n": 3}, {}),  # tags: a custom header
        (Limited, {"n": 4}, {}),  # a time limit: the timelimit header
    ],
    ids=["plain", "priority", "tags", "time-limit"],
)
def test_the_message_is_the_one_send_task_pushes(
    app: tuple[Jobs, Any], worker: Any, args: dict[str, Any], options: dict[str, Any]
) -> None:
    jobs, client = app
    assert jobs._adapter._lean.usable(_job(jobs, worker, args))  # type: ignore[attr-defined]
    worker.perform_later(args, **options)
    (lean,) = _pushed(client)
    client.flushdb()
    _through_send_task(jobs, worker, args, **options)
    (celery,) = _pushed(client)
    differ = {
        k: (lean["headers"].get(k), celery["headers"].get(k)) for k in {*lean["headers"], *celery["headers"]}
    }
    assert lean["headers"] == celery["headers"], {k: v for k, v in differ.items() if v[0] != v[1]}
    assert lean == celery
    assert lean["headers"]["task"] == worker.name


def test_a_job_enqueued_from_a_task_names_its_parent_and_root(app: tuple[Jobs, Any]) -> None:
    from celery._state import _task_stack

    jobs, client = app
    task = jobs.celery.tasks[Echo.name]
    task.push_request(id="parent-1", root_id="root-1", called_directly=False)
    _task_stack.push(task)
    try:
        Echo.perform_later({"n": 1})
    finally:
        _task_stack.pop()
        task.pop_request()
    (message,) = _pushed(client, per_job=set())
    assert (message["headers"]["parent_id"], message["headers"]["root_id"]) == ("parent-1", "root-1")


def test_a_publish_signal_receiver_sees_the_job_through_send_task(app: tuple[Jobs, Any]) -> None:
    from celery import signals

    jobs, client = app
    seen: list[str] = []

    def receiver(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        seen.append((headers or {}).get("id", ""))
        (headers or {})["from_receiver"] = "yes"

    signals.before_task_publish.connect(receiver, weak=False)
    try:
        handle = Echo.perform_later({"n": 1})
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert seen == [handle.id]
    (message,) = _pushed(client)
    assert message["headers"]["from_receiver"] == "yes"
    assert jobs.status(handle.id) == "queued"


def test_a_batch_pushes_the_messages_send_task_pushes_with_their_records(app: tuple[Jobs, Any]) -> None:
    jobs, client = app
    handles = Echo.perform_all_later([{"n": 1}, {"n": 2}])
    lean = _pushed(client)
    assert [jobs.status(h.id) for h in handles] == ["queued", "queued"]
    client.flushdb()
    for n in (1, 2):
        _through_send_task(jobs, Echo, {"n": n})
    assert lean == _pushed(client)
