"""The schedule state of the SQL kinds: the table ``<prefix>schedules`` (schema version 3), one
row per schedule. The compare-and-set is one statement, atomic in the database:

    INSERT INTO <prefix>schedules (name, last_tick, ...) VALUES (...)
    ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick, ...
    WHERE <prefix>schedules.last_tick IS NULL OR <prefix>schedules.last_tick < excluded.last_tick
    RETURNING name

A new schedule's row is inserted; an existing one is updated only from an older tick; two
schedulers inserting the same new row race on the primary key and the database picks one.
``RETURNING`` says who won: a row comes back only where one was written (PostgreSQL, and
SQLite 3.35+).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from unified_jobs.adapters.sql.schema import DEFAULT_TABLE_PREFIX
from unified_jobs.adapters.sql.store import JobStore as SqlTable
from unified_jobs.adapters.sql.store import aware
from unified_jobs.scheduler.state import ScheduleState, TickRecord

__all__ = ["SqlScheduleState"]

T = TypeVar("T")


class SqlScheduleState(ScheduleState):
    """``url``: a plain ``postgresql://`` / ``sqlite:///`` URI (or a ``ujsql+`` broker URL)."""

    def __init__(self, url: str, table_prefix: str = DEFAULT_TABLE_PREFIX) -> None:
        self._db = SqlTable(url, table_prefix)  # the engine, and the schema made on first use
        self.table = self._db.tables.schedules

    def get(self, names: Sequence[str]) -> dict[str, TickRecord]:
        if not names:
            return {}
        t = self.table
        with self._db._ready().begin() as conn:
            rows = conn.execute(select(t).where(t.c.name.in_(list(names)))).all()
        return {
            row.name: TickRecord(
                name=row.name,
                last_tick=aware(row.last_tick) if row.last_tick is not None else None,
                last_by=row.last_by,
                last_job_id=row.last_job_id,
                updated_at=aware(row.updated_at) if row.updated_at is not None else None,
            )
            for row in rows
        }

    def _upsert(self, values: dict[str, Any]) -> Any:
        t = self.table
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        stmt = insert(t).values(**values)
        return stmt.on_conflict_do_update(
            index_elements=[t.c.name],
            set_={
                "last_tick": stmt.excluded.last_tick,
                "last_by": stmt.excluded.last_by,
                "last_job_id": None,
                "updated_at": stmt.excluded.updated_at,
            },
            where=or_(t.c.last_tick.is_(None), t.c.last_tick < stmt.excluded.last_tick),
        ).returning(t.c.name)

    @staticmethod
    def _values(name: str, tick: datetime, by: str | None) -> dict[str, Any]:
        return {
            "name": name,
            "last_tick": tick.astimezone(timezone.utc),
            "last_by": by,
            "last_job_id": None,
            "updated_at": datetime.now(timezone.utc),
        }

    def advance(self, name: str, tick: datetime, by: str | None) -> bool:
        with self._db._ready().begin() as conn:
            return conn.execute(self._upsert(self._values(name, tick, by))).first() is not None

    def claim(self, name: str, tick: datetime, by: str, enqueue: Callable[[Any], T]) -> T | None:
        # One transaction: the tick is won and its job written together (the job goes in this
        # transaction where the queue is this database; elsewhere right after it commits), so
        # a scheduler that dies in between leaves the tick to the next pass.
        with self._db._ready().begin() as conn:
            if conn.execute(self._upsert(self._values(name, tick, by))).first() is None:
                return None
            job = enqueue(conn)
            conn.execute(self._note(name, tick, str(getattr(job, "id", job))))
            return job

    def note_job(self, name: str, tick: datetime, job_id: str) -> None:
        with self._db._ready().begin() as conn:
            conn.execute(self._note(name, tick, job_id))

    def _note(self, name: str, tick: datetime, job_id: str) -> Any:
        t = self.table
        return (
            update(t)
            .where(t.c.name == name, t.c.last_tick == tick.astimezone(timezone.utc))
            .values(last_job_id=job_id)
        )

    def forget(self, names: Sequence[str]) -> None:
        if not names:
            return
        t = self.table
        with self._db._ready().begin() as conn:
            conn.execute(t.delete().where(t.c.name.in_(list(names))))
