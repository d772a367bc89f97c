"""The kombu virtual transport over a SQL jobs table (PostgreSQL or SQLite), with leases.

Broker URL: ``ujsql+postgresql://user@host/db`` or ``ujsql+sqlite:///path/jobs.db``.

Life of a message: ``_put`` inserts a ``queued`` row (run_at = the Celery ``eta``, priority
from the message). A consumer claims ready rows (``processing``, a lease owner and expiry,
``attempts + 1``) and delivers them; a heartbeat thread renews the leases of every job this
channel holds until it is acked (``completed`` or deleted), rejected (``failed``) or requeued
(``queued``). A consumer that dies stops renewing: another consumer's reaper requeues the job
once its lease expires. See docs/explanation/sql-queue.md.
"""

from __future__ import annotations

import logging
import threading
from queue import Empty
from time import monotonic
from typing import Any

import sqlalchemy
from kombu.transport import virtual
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from unified_jobs.adapters.sql.channel import Channel, QoS, utcnow
from unified_jobs.adapters.sql.engine import dialect_of, get_engine, normalize_db_url
from unified_jobs.adapters.sql.options import SqlOptions
from unified_jobs.adapters.sql.queries import queries_for
from unified_jobs.adapters.sql.schema import tables_for
from unified_jobs.adapters.sql.wakeup import PgListener, register_local, unregister_local
from unified_jobs.errors import MissingDependencyError

__all__ = ["Channel", "QoS", "Transport"]

logger = logging.getLogger(__name__)


class Transport(virtual.Transport):
    """kombu transport ``ujsql``; see the module docstring."""

    Channel = Channel
    can_parse_url = True
    default_port = 0  # type: ignore[assignment]
    driver_type = "sql"
    driver_name = "unified_jobs_sql"
    connection_errors = (OperationalError, InterfaceError)  # type: ignore[assignment]
    channel_errors = (SQLAlchemyError,)
    implements = virtual.Transport.implements.extend(
        asynchronous=False, exchange_type=frozenset(["direct", "topic"]), heartbeats=False
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)  # type: ignore[no-untyped-call]
        self.options = SqlOptions.from_transport_options(client.transport_options or {})
        self.db_url = normalize_db_url(client.hostname)
        self.dialect = dialect_of(self.db_url)
        if self.dialect == "postgresql":
            try:
                import psycopg  # noqa: F401
            except ImportError as exc:
                raise MissingDependencyError(
                    "the Postgres queue needs psycopg 3: pip install 'unified-jobs[postgres]'"
                ) from exc
        self.engine = get_engine(
            self.db_url,
            busy_timeout_sec=self.options.busy_timeout_sec,
            sqlite_synchronous=self.options.sqlite_synchronous,
            engine_options=self.options.engine_options,
        )
        self.tables = tables_for(self.options.table_prefix)
        self.queries = queries_for(self.tables, self.dialect)
        self.local_key = (self.engine.url.render_as_string(hide_password=True), self.tables.prefix)
        self.wakeup = threading.Event()
        self._listener: PgListener | None = None
        self._wakeups_on = False
        pg = self.dialect == "postgresql"
        self._idle_poll = self.options.poll_interval_sec if pg else self.options.sqlite_poll_interval_sec

    def driver_version(self) -> str:
        return str(sqlalchemy.__version__)

    def start_wakeups(self) -> None:
        """Once a consumer exists: in-process pokes, and LISTEN on Postgres."""
        if self._wakeups_on:
            return
        self._wakeups_on = True
        register_local(self.local_key, self)
        if self.dialect == "postgresql":
            self._listener = PgListener(self.db_url, self.tables.notify_channel, self.wakeup)
            self._listener.start()
            # Don't miss a NOTIFY sent while LISTEN is being set up: wait briefly for it.
            self._listener.connected.wait(2.0)

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        """Deliver one batch; between empty polls, sleep until woken or the next poll."""
        start = monotonic()
        while True:
            self.wakeup.clear()
            try:
                self.cycle.get(self._deliver, timeout=timeout)  # type: ignore[union-attr]
                return
            except Empty:
                pass
            wait = self._idle_wait()
            if timeout is not None:
                left = timeout - (monotonic() - start)
                if left <= 0:
                    raise TimeoutError()  # socket.timeout: what Celery expects
                wait = min(wait, left)
            self.wakeup.wait(wait)

    def _idle_wait(self) -> float:
        wait = self._idle_poll
        now = utcnow()
        for channel in self.channels:
            due = getattr(channel, "next_due", None)
            if due is not None:
                # A floor, so rows locked by another claimer are not polled in a busy loop.
                wait = min(wait, max((due - now).total_seconds(), 0.01))
        return wait

    def close_connection(self, connection: Any) -> None:
        try:
            super().close_connection(connection)  # type: ignore[no-untyped-call]
        finally:
            if self._listener is not None:
                self._listener.stop()
                self._listener = None
            if self._wakeups_on:
                unregister_local(self.local_key, self)
                self._wakeups_on = False
