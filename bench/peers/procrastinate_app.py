"""procrastinate on Postgres (its psycopg 3 connector), with the no-op task
``bench.procrastinate_noop`` on the queue bench-procrastinate (a plain function: procrastinate's
worker runs it in a thread)."""

from __future__ import annotations

import procrastinate

from bench.peers import settings
from bench.queue_harness import note

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=settings.pg_url()))


@app.task(name="bench.procrastinate_noop", queue="bench-procrastinate")
def noop(sent: float) -> None:
    note(sent)
