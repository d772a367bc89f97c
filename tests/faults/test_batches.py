"""``perform_all_later`` is all or nothing: a batch the queue refuses midway leaves none of its
jobs, and its ``EnqueueError`` says nothing was enqueued, which is then true.

The refusals are the servers' own: on Postgres and SQLite a trigger on the jobs table raises at
the batch's 301st row (as a full disk or a server stopping midway would), on Redis a private
server runs out of memory (``maxmemory``, the default ``noeviction``) partway through.
RabbitMQ is not here: its batches are one AMQP transaction, and nothing here makes the broker
refuse a message in the middle of one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import redis
import sqlalchemy as sa

from tests.conftest import PG_HOST, PG_PORT, PG_URL, require_service
from tests.contract.contract_app import Echo, create_app
from tests.procs import PrivateRedis
from unified_jobs import Jobs
from unified_jobs.adapters.sql import ensure_schema
from unified_jobs.adapters.sql.engine import get_engine
from unified_jobs.adapters.sql.schema import tables_for
from unified_jobs.errors import EnqueueError

pytestmark = pytest.mark.timeout(120)

BATCH, REFUSED_AT = 500, 301

POSTGRES_TRIGGER = """
CREATE FUNCTION {p}refuse() RETURNS trigger AS $$
DECLARE seen integer;
BEGIN
  UPDATE {p}seen SET n = n + 1 RETURNING n INTO seen;
  IF seen >= {at} THEN RAISE EXCEPTION 'the disk is full (a test trigger)'; END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER {p}refuse BEFORE INSERT ON {p}jobs FOR EACH ROW EXECUTE FUNCTION {p}refuse();
"""

SQLITE_TRIGGER = """
CREATE TRIGGER {p}refuse BEFORE INSERT ON {p}jobs BEGIN
  UPDATE {p}seen SET n = n + 1;
  SELECT RAISE(ABORT, 'the disk is full (a test trigger)') WHERE (SELECT n FROM {p}seen) >= {at};
END
"""


def _sql_app(tmp_path: Path, kind: str, uri: str) -> tuple[Jobs, sa.Engine, str]:
    prefix = f"ujt_batch_{uuid4().hex[:8]}_"
    ensure_schema(uri, prefix)
    engine = get_engine(uri)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {prefix}seen (n integer NOT NULL)"))
        conn.execute(sa.text(f"INSERT INTO {prefix}seen VALUES (0)"))
        trigger = POSTGRES_TRIGGER if kind == "Postgres" else SQLITE_TRIGGER
        if kind == "Postgres":
            conn.execute(sa.text(trigger.format(p=prefix, at=REFUSED_AT)))
        else:
            conn.exec_driver_sql(trigger.format(p=prefix, at=REFUSED_AT))
    queue = {"kind": kind, "uri": uri, "table_prefix": prefix}
    jobs = create_app({"workers": {"mode": "BackgroundQueue"}, "queue": queue}, str(tmp_path / "r.jsonl"))
    return jobs, engine, prefix


@pytest.fixture(params=["Postgres", "Sqlite"])
def sql_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Jobs, sa.Engine, str]]:
    if request.param == "Postgres":
        require_service("PostgreSQL", PG_HOST, PG_PORT)
        uri = PG_URL
    else:
        uri = f"sqlite:///{tmp_path / 'jobs.db'}"
    jobs, engine, prefix = _sql_app(tmp_path, request.param, uri)
    yield jobs, engine, prefix
    jobs.shutdown(wait=True, timeout=10)
    if request.param == "Postgres":
        with engine.begin() as conn:
            tables = [t.name for t in vars(tables_for(prefix)).values() if isinstance(t, sa.Table)]
            for table in [*tables, f"{prefix}seen"]:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table} CASCADE"))
            conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {prefix}refuse() CASCADE"))


def test_a_sql_batch_refused_midway_leaves_no_job(sql_queue: tuple[Jobs, sa.Engine, str]) -> None:
    jobs, engine, prefix = sql_queue
    with pytest.raises(EnqueueError) as raised:
        jobs.perform_all_later(Echo, [{"n": n} for n in range(BATCH)])
    assert "the disk is full" in str(raised.value) and "Nothing was enqueued" in str(raised.value)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT count(*) FROM {prefix}jobs")).scalar_one()
    assert rows == 0, f"{rows} of {BATCH} jobs stayed enqueued after the EnqueueError"
    # The queue still takes a batch it accepts whole (the trigger refuses from row 301 on).
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {prefix}seen SET n = 0"))
    handles = jobs.perform_all_later(Echo, [{"n": n} for n in range(REFUSED_AT - 1)])
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT count(*) FROM {prefix}jobs")).scalar_one()
    assert rows == len(handles) == REFUSED_AT - 1


def test_a_redis_batch_that_runs_out_of_memory_leaves_no_job(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    try:
        client = redis.Redis.from_url(server.url)
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 2_000_000)  # room for a few hundred of the jobs
        queue = {"kind": "Redis", "uri": server.url}
        jobs = create_app({"workers": {"mode": "BackgroundQueue"}, "queue": queue}, str(tmp_path / "r.jsonl"))
        before = set(client.keys("*"))
        big = "x" * 2_000
        with pytest.raises(EnqueueError) as raised:
            jobs.perform_all_later(Echo, [{"n": n, "label": big} for n in range(5_000)])
        assert "OOM" in str(raised.value) or "memory" in str(raised.value), raised.value
        assert "Nothing was enqueued" in str(raised.value)
        left = {key.decode() for key in set(client.keys("*")) - before}
        records = sorted(key for key in left if key.startswith("unified_jobs:job:"))
        queued = sum(client.llen(key) for key in left if client.type(key) == b"list")
        assert not records and queued == 0, f"{len(records)} job records, {queued} messages stayed"
        # With memory again, the same batch goes in whole.
        client.config_set("maxmemory", 0)
        handles = jobs.perform_all_later(Echo, [{"n": n, "label": big} for n in range(5_000)])
        queued = sum(client.llen(key) for key in client.keys("*") if client.type(key) == b"list")
        assert queued == len(handles) == 5_000
        jobs.shutdown(wait=True, timeout=10)
    finally:
        server.stop()
