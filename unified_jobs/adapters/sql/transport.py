"""The kombu virtual transport over a SQL jobs table (PostgreSQL or SQLite), with leases.

Broker URL: ``ujsql+postgresql://user@host/db`` or ``ujsql+sqlite:///path/jobs.db``.

Life of a message: ``_put`` inserts a ``queued`` row (run_at = the Celery ``eta``, priority
from the message). A consumer claims ready rows (``processing``, a lease owner and expiry,
``attempts + 1``) and delivers them; a heartbeat thread renews the leases of every job this
channel holds until it is acked (``completed`` or deleted), rejected (``failed``) or requeued
(``queued``). A consumer that dies stops renewing: another consumer's reaper requeues the job
once its lease expires. See docs/explanation/sql-queue.md.

Remote control (``celery inspect``/``control``, Flower): fanout and topic exchanges work, with
their bindings shared through the database and control messages kept in a table of their own
(``broadcast.py``). On Postgres a NOTIFY wakes their consumer; SQLite polls every
``CONTROL_POLL_SQLITE_SEC``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence
from queue import Empty
from time import monotonic
from typing import Any

import sqlalchemy
from kombu.transport import virtual
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from unified_jobs.adapters.sql.broadcast import Broadcast
from unified_jobs.adapters.sql.channel import Channel, QoS, utcnow
from unified_jobs.adapters.sql.engine import dialect_of, get_engine, normalize_db_url
from unified_jobs.adapters.sql.options import SqlOptions
from unified_jobs.adapters.sql.queries import queries_for
from unified_jobs.adapters.sql.schema import tables_for
from unified_jobs.adapters.sql.wakeup import (
    PgListener,
    SocketListener,
    poke_local,
    poke_machine,
    register_local,
    socket_folder,
    unregister_local,
)
from unified_jobs.errors import MissingDependencyError

__all__ = ["Channel", "QoS", "Transport"]

logger = logging.getLogger(__name__)

#: SQLite: how often a consumer polls its control queues. ``celery inspect`` waits 1 s for
#: replies, and a round trip is two polls (the request, then the reply); an idle poll is one
#: indexed read without the write lock (a few microseconds).
CONTROL_POLL_SQLITE_SEC = 0.1
#: Postgres: a NOTIFY wakes control consumers (and a reconnect polls), so this fallback poll
#: should never matter; it is rare because each poll is a write transaction.
CONTROL_POLL_PG_SEC = 5.0
#: While the database does not answer: seconds between polls, and between reminders in the log.
DOWN_RETRY_SEC = 0.5
DOWN_REMIND_SEC = 30.0


#: The transports with a consumer in this process (``stop_waiting``).
_consuming: weakref.WeakSet[Transport] = weakref.WeakSet()


def stop_waiting() -> None:
    """A worker is shutting down: every consuming transport of this process stops waiting for
    jobs. Safe to call from a signal handler: the events are set from a new thread, never while
    the interrupted thread may hold one of their locks."""

    def wake() -> None:
        for transport in list(_consuming):
            transport.stopping = True
            transport.wakeup.set()

    threading.Thread(target=wake, name="unified_jobs-sql-stop", daemon=True).start()


class Transport(virtual.Transport):
    """kombu transport ``ujsql``; see the module docstring."""

    Channel = Channel
    can_parse_url = True
    default_port = 0  # type: ignore[assignment]
    # Not kombu's "sql": Celery turns events off for that one (its SQLAlchemy transport has no
    # fanout); Flower needs them.
    driver_type = "ujsql"
    driver_name = "unified_jobs_sql"
    connection_errors = (OperationalError, InterfaceError)  # type: ignore[assignment]
    channel_errors = (SQLAlchemyError,)
    implements = virtual.Transport.implements.extend(
        asynchronous=False, exchange_type=frozenset(["direct", "topic", "fanout"]), heartbeats=False
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
        pg = self.dialect == "postgresql"
        #: SQLite: the folder of its consumers' sockets (``wakeup.py``); None on Postgres.
        self.socket_folder = (
            None
            if pg or not self.engine.url.database
            else socket_folder(self.engine.url.database, self.tables.prefix)
        )
        self._socket: SocketListener | None = None
        self._wakeups_on = False
        self._idle_poll = self.options.poll_interval_sec if pg else self.options.sqlite_poll_interval_sec
        # A control queue's binding must outlive a few heartbeats (which renew it).
        binding_ttl = 4 * self.options.effective_heartbeat_sec
        self.broadcast = Broadcast(self.engine, self.tables, self.dialect, binding_ttl, self.local_key)
        #: Bumped whenever a control message may be waiting (NOTIFY, a publish here, a reconnect).
        self.control_gen = 0
        self.control_poll_sec = (
            max(self.options.poll_interval_sec, CONTROL_POLL_PG_SEC) if pg else CONTROL_POLL_SQLITE_SEC
        )
        self._watched: frozenset[str] = frozenset()
        #: False while the consumer was woken only to poll its control queues (drain_events).
        self.jobs_due = True
        #: Set by ``stop_waiting``: an idle ``drain_events`` returns instead of waiting out its
        #: timeout (Celery's loop waits 2 s at a time), so a warm shutdown starts at once.
        self.stopping = False
        #: Since when (monotonic) the database has not answered a poll, and when that was last
        #: logged; None while it answers.
        self._down_since: float | None = None
        self._down_said = 0.0

    def driver_version(self) -> str:
        return str(sqlalchemy.__version__)

    def start_wakeups(self) -> None:
        """Once a consumer exists: in-process pokes, and LISTEN on Postgres."""
        if self._wakeups_on:
            return
        self._wakeups_on = True
        _consuming.add(self)
        register_local(self.local_key, self)
        if self.dialect == "postgresql":
            channels = {
                self.tables.notify_channel: self._on_job_notify,
                self.tables.control.name: self._on_control_notify,
            }
            self._listener = PgListener(self.db_url, channels, self._on_listener_connect)
            self._listener.start()
            # Don't miss a NOTIFY sent while LISTEN is being set up: wait briefly for it.
            self._listener.connected.wait(2.0)
        elif self.socket_folder is not None:
            try:
                self._socket = SocketListener(self.socket_folder, self.wakeup.set)
            except OSError as exc:  # a read-only temp folder, say: polling still finds every job
                logger.warning(
                    "no wakeup socket in %s (%s): this consumer finds new jobs by polling only",
                    self.socket_folder,
                    exc,
                )
            else:
                self._socket.start()

    def poke(self) -> None:
        """An enqueue on this table was committed: wake its idle consumers, in this process
        and, on SQLite, in the others of this machine."""
        poke_local(self.local_key)
        if self.socket_folder is not None:
            poke_machine(self.socket_folder)

    def _on_job_notify(self, queue: str) -> None:
        self.wakeup.set()

    def _on_control_notify(self, queue: str) -> None:
        self.poke_control((queue,))

    def _on_listener_connect(self) -> None:
        self._wake_control()  # notifications sent while disconnected are lost

    def poke_control(self, queues: Sequence[str]) -> None:
        """Control messages were written for ``queues``: wake if one is consumed here (every
        listener hears every control message, Flower's events too)."""
        if not self._watched.isdisjoint(queues):
            self._wake_control()

    def _wake_control(self) -> None:
        self.control_gen += 1
        self.wakeup.set()

    def watch_control(self) -> None:
        """The control queues consumed here changed (a channel's consume, cancel or close)."""
        self._watched = frozenset(
            q for channel in self.channels for q in getattr(channel, "_control_queues", ())
        )

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        """Deliver one batch; between empty polls, sleep until woken or the next poll.

        Control queues are polled along with jobs when their poll is due about then; a wait
        that ends only because they are due (jobs are polled less often) sets ``jobs_due``
        false, so that the channels poll those and do not claim jobs as well.
        """
        start = monotonic()
        self.jobs_due = True
        jobs_at = start  # when to poll for jobs next (monotonic)
        while True:
            self.wakeup.clear()
            try:
                self.cycle.get(self._deliver, timeout=timeout)  # type: ignore[union-attr]
                self._answered()
                return
            except Empty:
                self._answered()
            except self.connection_errors as exc:
                # The database is down (or restarting): wait and poll again, rather than let
                # Celery tear the consumer down, which hands the running jobs back to the
                # queue and loses the acks still to be written (leases.py keeps them).
                self._down(exc)
                self.wakeup.wait(self._retry_wait(timeout, start))
                raise TimeoutError() from exc
            now = monotonic()
            if self.jobs_due:  # they were just polled
                jobs_at = now + self._idle_wait()
            control_at = self._next_control_poll()
            # A control poll due a little before the next job poll waits for it: one wake-up.
            slack = self.control_poll_sec / 2
            for_control = control_at is not None and control_at + slack < jobs_at
            wait = max((control_at if control_at is not None and for_control else jobs_at) - now, 0.005)
            if timeout is not None:
                left = timeout - (now - start)
                if left <= 0:
                    raise TimeoutError()  # socket.timeout: what Celery expects
                wait = min(wait, left)
            woken = self.wakeup.wait(wait)
            if self.stopping:
                raise TimeoutError()  # the worker is shutting down: back to its loop at once
            self.jobs_due = woken or not for_control

    def _down(self, exc: BaseException) -> None:
        now = monotonic()
        if self._down_since is None:
            self._down_since = self._down_said = now
            logger.warning(
                "the jobs database does not answer (%s: %s); polling it again every %g s, the "
                "jobs held here stay leased",
                type(exc).__name__,
                str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                DOWN_RETRY_SEC,
            )
        elif now - self._down_said >= DOWN_REMIND_SEC:
            self._down_said = now
            logger.warning("the jobs database still does not answer after %.0f s", now - self._down_since)

    def _answered(self) -> None:
        if self._down_since is not None:
            logger.warning("the jobs database answers again, after %.1f s", monotonic() - self._down_since)
            self._down_since = None

    def _retry_wait(self, timeout: float | None, start: float) -> float:
        wait = DOWN_RETRY_SEC
        if timeout is not None:
            wait = min(wait, max(timeout - (monotonic() - start), 0.0))
        return wait

    def _idle_wait(self) -> float:
        """Until the next poll for jobs."""
        wait = self._idle_poll
        now = utcnow()
        for channel in self.channels:
            due = getattr(channel, "next_due", None)
            if due is not None:
                # A floor, so rows locked by another claimer are not polled in a busy loop.
                wait = min(wait, max((due - now).total_seconds(), 0.01))
        return wait

    def _next_control_poll(self) -> float | None:
        """When (monotonic) control queues are polled next, if any are consumed here."""
        polls = [
            p for channel in self.channels if (p := getattr(channel, "next_control_poll", None)) is not None
        ]
        return min(polls) if polls else None

    def close_connection(self, connection: Any) -> None:
        try:
            super().close_connection(connection)  # type: ignore[no-untyped-call]
        finally:
            if self._listener is not None:
                self._listener.stop()
                self._listener = None
            if self._socket is not None:
                self._socket.stop()
                self._socket = None
            if self._wakeups_on:
                unregister_local(self.local_key, self)
                self._wakeups_on = False
            self.broadcast.close()
