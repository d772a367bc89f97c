"""Plain Celery on the backend of ``BENCH_BACKEND``, with the harness's no-op task
(``bench.plain_noop`` on the queue bench-plain): the Redis transport, or kombu's SQLAlchemy one
(``sqla+postgresql+psycopg://``: psycopg 3, as psycopg2 is not installed; ``sqla+sqlite:///``)."""

from __future__ import annotations

from bench.peers import settings
from bench.queue_harness import plain_app


def broker() -> str:
    kind = settings.backend()
    if kind == "redis":
        return settings.redis_url()
    if kind == "postgres":
        return "sqla+" + settings.pg_url_for("postgresql+psycopg")
    return f"sqla+sqlite:///{settings.sqlite_path()}"


plain, plain_noop = plain_app(broker())
