"""One INSERT compiled once and run straight on a pooled DBAPI connection, in autocommit: the
one-job enqueue of the SQL kinds (``perform_later`` of a job due now, without a unique key).

A single INSERT is atomic on its own, so it needs no BEGIN and COMMIT around it: on Postgres
that is one round trip instead of three (psycopg sends BEGIN on its own), on SQLite the
statement's own implicit transaction (under the busy timeout, as ``BEGIN IMMEDIATE`` is) instead
of the engine's. Executing through SQLAlchemy's ``Connection`` costs more than the statement
itself on SQLite (about two thirds of an enqueue's time went to its events, parameter
processing, result set-up and transaction bookkeeping); here the statement's SQL, the order of
its parameters and their type processors are worked out once, by SQLAlchemy's own compiler.

The connection is the engine pool's (``raw_connection``), so its checkout and checkin events
run as for any other use (the SQLite fork guard holds it; an idle Postgres connection is
pinged). A database error comes out as SQLAlchemy's (``DBAPIError``), as an ``execute``'s does,
and a lost connection is invalidated, not pooled again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Insert

__all__ = ["PreparedInsert"]


class PreparedInsert:
    """``statement`` (an INSERT returning nothing) for ``engine``: call it with one row's
    parameters (a dict, as ``Connection.execute`` takes) to insert that row."""

    def __init__(self, engine: Engine, statement: Insert) -> None:
        dialect = engine.dialect
        compiled: Any = statement.compile(dialect=dialect)
        self.engine = engine
        self.sql = str(compiled)
        self._compiled = compiled
        self._positions: list[str] | None = list(compiled.positiontup) if dialect.positional else None
        self._processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._processors[name] = processor
        self._postgres = dialect.name == "postgresql"
        self._dbapi_error: type[Exception] = dialect.loaded_dbapi.Error

    def params(self, row: dict[str, Any]) -> Any:
        """The DBAPI parameters of ``row``: every bound value (the statement's literals too),
        through its type's processor, in the paramstyle of the driver."""
        values = self._compiled.construct_params(row)
        for name, processor in self._processors.items():
            values[name] = processor(values[name])
        if self._positions is not None:
            return tuple(values[name] for name in self._positions)
        return values

    def __call__(self, row: dict[str, Any]) -> None:
        params = self.params(row)
        raw: Any = self.engine.raw_connection()
        try:
            driver = raw.driver_connection
            try:
                if self._postgres:
                    self._insert_autocommit(raw, driver, params)
                else:  # the engine's sqlite3 connections have isolation_level None: autocommit
                    driver.execute(self.sql, params)
            except self._dbapi_error as exc:
                dialect = self.engine.dialect
                lost = dialect.is_disconnect(exc, driver, None)  # type: ignore[arg-type]
                if lost and raw.is_valid:  # (a failed reset to non-autocommit invalidated it)
                    raw.invalidate(exc)
                raise DBAPIError.instance(
                    self.sql, params, exc, self._dbapi_error, connection_invalidated=lost, dialect=dialect
                ) from exc
        finally:
            raw.close()  # back to the pool (or discarded, if invalidated)

    def _insert_autocommit(self, raw: Any, driver: Any, params: Any) -> None:
        if driver.info.transaction_status != 0:  # not IDLE: a checkout's ping began one
            driver.rollback()
        driver.autocommit = True
        try:
            driver.execute(self.sql, params)
        finally:
            try:
                driver.autocommit = False
            except Exception:  # a broken connection: never pooled again in autocommit
                raw.invalidate()
