"""huey on the backend of ``BENCH_BACKEND``: ``RedisHuey`` (blocking BRPOP), ``SqlHuey`` of
huey.contrib.sql_huey through peewee's psycopg 3 database, or ``SqliteHuey``. The no-op task is
``bench.huey_noop``."""

from __future__ import annotations

from huey import Huey, RedisHuey, SqliteHuey

from bench.peers import settings
from bench.queue_harness import note


def make() -> Huey:
    kind = settings.backend()
    if kind == "redis":
        return RedisHuey("bench-huey", url=settings.redis_url())
    if kind == "postgres":
        from huey.contrib.sql_huey import SqlHuey

        return SqlHuey("bench-huey", database=settings.pg_url_for("psycopg3"))
    return SqliteHuey("bench-huey", filename=settings.sqlite_path())


huey = make()


@huey.task(name="bench.huey_noop")
def noop(sent: float) -> None:
    note(sent)
