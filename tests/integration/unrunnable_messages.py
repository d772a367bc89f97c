"""Messages a worker cannot run, as other producers (or old code) send them, and what must come
of them on a kind whose job store is not the queue (Redis, RabbitMQ): each one a failed job
with its raw body and the reason, shown by ``jobs failed``; none run, and the worker goes on.
Used by test_redis_queue.py and test_rabbitmq_queue.py with real workers."""

from __future__ import annotations

import json
from pathlib import Path

from tests.contract.contract_app import Echo
from tests.procs import WorkerProcess, read_records, wait_until
from unified_jobs import Jobs


def publish_unrunnable(jobs: Jobs, queue: str = "default") -> None:
    """Four messages no worker can run, then one good job (``Echo`` n=2)."""
    amqp = jobs.celery.amqp
    with jobs.celery.connection_for_write() as conn:
        producer = conn.Producer()
        # A task no app registers (an old name, another project's task).
        amqp.send_task_message(
            producer,
            "no.such.task",
            amqp.as_task_v2("unknown-1", "no.such.task", kwargs={"n": 1}),
            queue=queue,
        )
        # A body that says JSON and is not.
        producer.publish(
            b"{not json",
            routing_key=queue,
            content_type="application/json",
            content_encoding="utf-8",
            headers={"id": "badjson-1", "task": "contract.Echo"},
        )
        # Pickle, which the app does not accept.
        amqp.send_task_message(
            conn.Producer(serializer="pickle"),
            "contract.Echo",
            amqp.as_task_v2("pickle-1", "contract.Echo", kwargs={"n": 666}),
            queue=queue,
            serializer="pickle",
        )
        # JSON without a task header: not a Celery task at all.
        producer.publish({"hello": "world"}, routing_key=queue, serializer="json")
    Echo.perform_later({"n": 2})


def assert_failed_with_body_and_reason(jobs: Jobs, record: Path, worker: WorkerProcess) -> None:
    assert wait_until(lambda: len(read_records(record)) >= 1, timeout=30), worker.output()[-3000:]
    assert wait_until(lambda: len(jobs.failed()) >= 4, timeout=10), worker.output()[-3000:]
    failed = {info.id: info for info in jobs.failed()}
    assert len(failed) == 4, failed
    assert "is not registered" in (failed["unknown-1"].last_error or "")
    assert failed["unknown-1"].worker == "no.such.task" and failed["unknown-1"].queue == "default"
    assert "does not decode" in (failed["badjson-1"].last_error or "")
    assert failed["badjson-1"].args == "{not json"
    assert "untrusted content of type pickle" in (failed["pickle-1"].last_error or "")
    (other,) = [info for job_id, info in failed.items() if job_id.startswith("unrunnable-")]
    assert "not a Celery task message" in (other.last_error or "")
    assert json.loads(other.args) == {"hello": "world"}
    assert all(info.status == "failed" for info in failed.values())
    assert [r["args"]["n"] for r in read_records(record)] == [2]  # none of them ran
    assert jobs.discard(other.id) and len(jobs.failed()) == 3
