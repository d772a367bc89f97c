"""The Redis kind builds a job's message itself (``adapters/celery/lean_publish.py``) and pushes
it with the job's record in one command. The message must be the one Celery's ``send_task``
pushes for the same job, field by field, so that ``celery worker``, Flower and every tool that
reads Celery's protocol see no difference; and where the app's settings could make Celery
publish differently, ``send_task`` publishes it, as before. On a Redis of the test's own."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import PG_HOST, PG_PORT, PG_URL, clear_sql_jobs, require_service, sql_prefix
from tests.contract.contract_app import Echo, Limited, Mail, create_app
from tests.procs import PrivateRedis
from unified_jobs import Jobs
from unified_jobs.adapters.celery.kinds.redis_transport import Rider, riding
from unified_jobs.adapters.sql.engine import normalize_db_url

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


def _at(value: Any) -> float:
    """A run_at column's value (a datetime, or SQLite's text) in epoch seconds."""
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def _rows(engine: Any, prefix: str) -> list[dict[str, Any]]:
    """The SQL queue's rows, oldest first, each payload decoded with its per-job fields out."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(f"SELECT queue, task_name, priority, run_at, payload FROM {prefix}jobs ORDER BY id")
        ).mappings()
        found = []
        for row in rows:
            message = json.loads(row["payload"])
            message["body"] = json.loads(base64.b64decode(message["body"]))
            for part in (message["headers"], message["properties"]):
                for field in PER_JOB & set(part):
                    part[field] = "-"
            # Due later: an eta, and the row's run_at from it (times differ from run to run).
            eta = message["headers"]["eta"]
            assert (eta is None) == (abs(_at(row["run_at"]) - time.time()) < 60)
            message["headers"]["eta"] = eta is not None
            found.append({**row, "payload": message, "run_at": None})
        return found


@pytest.fixture(params=["sqlite", "postgres"])
def sql_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """(the queue's config, its table prefix): a SQLite file, or tables of this module's own on
    the shared Postgres."""
    if request.param == "sqlite":
        yield {"kind": "Sqlite", "uri": f"sqlite:///{tmp_path / 'jobs.db'}"}, "unified_jobs_"
        return
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    prefix = sql_prefix("lean")
    clear_sql_jobs(PG_URL, prefix)
    yield {"kind": "Postgres", "uri": PG_URL, "table_prefix": prefix}, prefix
    clear_sql_jobs(PG_URL, prefix)


def test_a_sql_batch_is_one_insert_of_the_rows_send_task_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sql_queue: tuple[dict[str, Any], str]
) -> None:
    """``perform_all_later`` inserts every row in one statement (a COPY on Postgres), each row
    the one ``send_task`` writes (a job due later too: its ``eta`` and ``run_at``)."""
    import sqlalchemy as sa

    from unified_jobs.adapters.sql.channel import Channel
    from unified_jobs.adapters.sql.leases import Leases

    queue, prefix = sql_queue
    config = {"workers": {"mode": "BackgroundQueue"}, "queue": queue}
    jobs = create_app(config, str(tmp_path / "record.jsonl"))
    engine = sa.create_engine(normalize_db_url(queue["uri"]))
    inserts: list[int] = []
    put_many = Channel.put_many
    counted = lambda self, m, c: inserts.append(len(m)) or put_many(self, m, c)  # noqa: E731
    monkeypatch.setattr(Channel, "put_many", counted)
    put_one = Channel.put_one
    one = lambda self, *m: inserts.append(1) or put_one(self, *m)  # noqa: E731  (a batch of one: autocommit)
    monkeypatch.setattr(Channel, "put_one", one)
    copies: list[int] = []
    copy = Leases._copy
    copied = lambda self, rows, c: copies.append(len(rows)) or copy(self, rows, c)  # noqa: E731
    monkeypatch.setattr(Leases, "_copy", copied)
    try:
        batches = [[{"n": 1}, {"n": 2}], [{"n": 3}]]
        Echo.perform_all_later(batches[0])
        Mail.perform_all_later(batches[1], priority=4, wait=timedelta(hours=1))
        assert inserts == [2, 1]
        # COPY for more than one row, on Postgres only; one row is an INSERT.
        assert copies == ([2] if queue["kind"] == "Postgres" else [])
        lean = _rows(engine, prefix)
        with engine.begin() as conn:
            conn.execute(sa.text(f"DELETE FROM {prefix}jobs"))
        monkeypatch.setattr(jobs._adapter._lean, "usable", lambda job: False)  # type: ignore[attr-defined]
        Echo.perform_all_later(batches[0])
        Mail.perform_all_later(batches[1], priority=4, wait=timedelta(hours=1))
        assert len(lean) == 3 and [r["payload"]["headers"]["eta"] for r in lean] == [False, False, True]
        assert lean == _rows(engine, prefix)
    finally:
        engine.dispose()
        jobs.shutdown()


def test_a_batch_the_database_refuses_is_an_enqueue_error_and_writes_no_row(
    tmp_path: Path, sql_queue: tuple[dict[str, Any], str]
) -> None:
    """A row of the batch that the database refuses (here a CHECK constraint of the test's
    own) fails the whole batch, COPY on Postgres too: EnqueueError, and no row of it is left."""
    import sqlalchemy as sa

    from unified_jobs.errors import EnqueueError

    queue, prefix = sql_queue
    config = {"workers": {"mode": "BackgroundQueue"}, "queue": queue}
    jobs = create_app(config, str(tmp_path / "record.jsonl"))
    engine = sa.create_engine(normalize_db_url(queue["uri"]))
    Echo.perform_later({"n": 0})  # the tables exist
    check = f"{prefix}test_no_refused"
    with engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {prefix}jobs"))
        if queue["kind"] == "Postgres":
            refuse = f"ALTER TABLE {prefix}jobs ADD CONSTRAINT {check} CHECK (queue <> 'refused')"
            conn.execute(sa.text(refuse))
        else:  # SQLite has no ADD CONSTRAINT: a trigger that aborts the insert
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER {check} BEFORE INSERT ON {prefix}jobs WHEN NEW.queue = 'refused' "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
    try:
        with pytest.raises(EnqueueError, match=r"could not enqueue 3 jobs .*Nothing was enqueued"):
            Echo.perform_all_later([{"n": 1}, {"n": 2}, {"n": 3}], queue="refused")
        with engine.connect() as conn:
            assert conn.execute(sa.text(f"SELECT count(*) FROM {prefix}jobs")).scalar_one() == 0
        # The connection it failed on is usable again: the next batch goes in.
        handles = Echo.perform_all_later([{"n": 4}, {"n": 5}])
        assert [jobs.status(h.id) for h in handles] == ["queued", "queued"]
    finally:
        with engine.begin() as conn:
            if queue["kind"] == "Postgres":
                conn.execute(sa.text(f"ALTER TABLE {prefix}jobs DROP CONSTRAINT {check}"))
            else:
                conn.execute(sa.text(f"DROP TRIGGER {check}"))
        engine.dispose()
        jobs.shutdown()
