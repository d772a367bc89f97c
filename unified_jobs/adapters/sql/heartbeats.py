"""Heartbeats in the SQL queue's database: the ``JobStore`` heartbeat methods of the Postgres
and SQLite kinds' store, on the table ``<prefix>workers`` (schema version 4).

One row per worker process, upserted on each beat (``INSERT ... ON CONFLICT (id) DO UPDATE``,
which both databases have). Each row holds its ``expires_at`` (``core.heartbeat.expires_at``);
every write and read first deletes the expired rows, so a worker that died without saying so
is forgotten without a sweeper. The statements are here, beside the one table they touch.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from unified_jobs.adapters.sql.store import JobStore as SqlTable
from unified_jobs.core.heartbeat import expires_at
from unified_jobs.core.job import aware, utcnow
from unified_jobs.core.monitor import WorkerBeat

__all__ = ["SqlHeartbeats"]

logger = logging.getLogger(__name__)


class SqlHeartbeats:
    """Mixed into the SQL kinds' ``SqlJobStore`` (before ``JobStore``); uses its ``table``."""

    table: SqlTable

    def record_heartbeat(self, beat: WorkerBeat) -> None:
        workers = self.table.tables.workers
        row = _row(beat)
        with self.table._ready().begin() as conn:
            _delete_expired(conn, workers)
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            stmt = insert(workers).values(row)
            stmt = stmt.on_conflict_do_update(
                index_elements=[workers.c.id],
                set_={name: stmt.excluded[name] for name in row if name != "id"},
            )
            conn.execute(stmt)

    def forget_worker(self, worker_id: str) -> None:
        workers = self.table.tables.workers
        with self.table._ready().begin() as conn:
            conn.execute(delete(workers).where(workers.c.id == worker_id))

    def workers(self) -> list[WorkerBeat]:
        workers = self.table.tables.workers
        with self.table._ready().begin() as conn:
            _delete_expired(conn, workers)
            rows = conn.execute(select(workers).order_by(workers.c.id)).all()
        beats: list[WorkerBeat] = []
        for row in rows:
            try:
                beats.append(_beat(row))
            except (TypeError, ValueError) as exc:
                logger.warning("skipping the unreadable heartbeat %r in %s: %r", row.id, workers.name, exc)
        return beats


def _delete_expired(conn: Connection, workers: Table) -> None:
    conn.execute(delete(workers).where(workers.c.expires_at < utcnow()))


def _row(beat: WorkerBeat) -> dict[str, Any]:
    return {
        "id": beat.id,
        "host": beat.host,
        "pid": beat.pid,
        "kind": beat.kind,
        "queues": json.dumps(list(beat.queues)),
        "concurrency": beat.concurrency,
        "current": json.dumps(list(beat.current)),
        "started_at": beat.started_at,
        "beat_at": beat.beat_at,
        "polled_at": beat.polled_at,
        "interval": beat.interval,
        "expires_at": expires_at(beat),
        "extra": json.dumps(beat.extra),
    }


def _beat(row: Row[Any]) -> WorkerBeat:
    return WorkerBeat(
        id=str(row.id),
        host=str(row.host),
        pid=int(row.pid),
        kind=str(row.kind),
        queues=tuple(json.loads(row.queues)),
        concurrency=int(row.concurrency),
        current=tuple(json.loads(row.current)),
        started_at=aware(row.started_at),
        beat_at=aware(row.beat_at),
        polled_at=aware(row.polled_at) if row.polled_at is not None else None,
        interval=float(row.interval),
        extra=json.loads(row.extra or "{}"),
    )
