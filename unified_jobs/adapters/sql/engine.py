"""Database URLs and SQLAlchemy engines for the SQL queue: one engine per URL per process.

SQLite connections are set up for a queue: WAL, a busy timeout, ``synchronous`` as configured,
and every transaction opened with ``BEGIN IMMEDIATE`` so a claim takes the write lock before
it reads (no lock upgrade, so no SQLITE_BUSY deadlock between two claimers).
Engines are fork-safe: a forked child (Celery's prefork pool) gets fresh pools and never
touches its parent's connections.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import ConnectionPoolEntry

from unified_jobs._uri import mask_uri
from unified_jobs.adapters.sql import fork_guard

__all__ = ["dialect_of", "get_engine", "guard_forks", "normalize_db_url", "with_timeouts"]

_SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

#: Seconds: the defaults of ``queue.connect_timeout`` and ``queue.read_timeout``, for a
#: Postgres URL that comes with neither (``get_engine`` of a URL not from the config).
DEFAULT_CONNECT_TIMEOUT = 0.5
DEFAULT_READ_TIMEOUT = 5.0
#: libpq's ``connect_timeout`` is whole seconds, and at least 2 (it takes less as 2).
_LIBPQ_MIN_CONNECT_TIMEOUT = 2
#: ``tcp_user_timeout`` came with libpq 12.
_LIBPQ_TCP_USER_TIMEOUT = 120000


def libpq_connect_timeout(seconds: float) -> int:
    """libpq's ``connect_timeout`` for a wait of ``seconds``: whole seconds, at least 2."""
    return max(_LIBPQ_MIN_CONNECT_TIMEOUT, math.ceil(seconds))


def _libpq_version() -> int:
    try:
        import psycopg
    except ImportError:
        return 0
    try:
        return int(psycopg.pq.version())
    except Exception:  # no libpq loadable: the connection will say so itself
        return 0


def with_timeouts(
    uri: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, read_timeout: float = DEFAULT_READ_TIMEOUT
) -> str:
    """``uri`` with libpq's timeouts when it is a Postgres URL that has none of its own
    (its own win): ``connect_timeout`` (the whole connection set-up, login included; whole
    seconds, at least 2) and ``tcp_user_timeout`` (milliseconds that data sent may stay
    unacknowledged before the connection is closed: a server whose host or network went away
    in the middle of a statement). A server that is up and stops answering on a connection
    already set up is not bounded: libpq has no timeout for a statement's answer. Other URLs
    (SQLite) are returned as they are."""
    try:
        url = make_url(normalize_db_url(uri))
    except Exception:  # not a URL: dialect_of and the transport say so
        return uri
    if url.get_backend_name() != "postgresql":
        return uri
    params: list[str] = []
    if "connect_timeout" not in url.query:
        params.append(f"connect_timeout={libpq_connect_timeout(connect_timeout)}")
    if "tcp_user_timeout" not in url.query and _libpq_version() >= _LIBPQ_TCP_USER_TIMEOUT:
        params.append(f"tcp_user_timeout={max(1, round(read_timeout * 1000))}")
    if not params:
        return uri
    head, sep, query = uri.partition("?")
    # Appended as text: the user's URI stays as written (its password's encoding included).
    return f"{head}?{query}{'&' if query else ''}{'&'.join(params)}" if sep else f"{uri}?{'&'.join(params)}"


def normalize_db_url(uri: str) -> str:
    """The SQLAlchemy URL for a user's plain ``postgresql://`` or ``sqlite:///`` URI.

    ``postgres://`` and ``postgresql://`` get the psycopg 3 driver; others pass unchanged.
    """
    for plain in ("postgres://", "postgresql://"):
        if uri.startswith(plain):
            return "postgresql+psycopg://" + uri[len(plain) :]
    return uri


def dialect_of(uri: str) -> str:
    """``"postgresql"`` or ``"sqlite"``; ``ValueError`` for anything else."""
    backend = make_url(normalize_db_url(uri)).get_backend_name()
    if backend not in ("postgresql", "sqlite"):
        raise ValueError(
            f"the SQL queue supports postgresql:// and sqlite:/// URLs, not {backend}:// ({mask_uri(uri)!r})"
        )
    if backend == "sqlite" and make_url(uri).database in (None, "", ":memory:"):
        raise ValueError(
            f"the SQLite queue needs a file, e.g. sqlite:///jobs.db, not {mask_uri(uri)!r}: workers are "
            "other processes"
        )
    return backend


_engines: dict[tuple[str, float, str, str], Engine] = {}
_engines_lock = threading.Lock()


def get_engine(
    uri: str,
    *,
    busy_timeout_sec: float = 10.0,
    sqlite_synchronous: str = "NORMAL",
    engine_options: dict[str, Any] | None = None,
) -> Engine:
    """The process's shared engine for ``uri`` (created on first use)."""
    url = normalize_db_url(uri)
    key = (url, busy_timeout_sec, sqlite_synchronous, _options_key(engine_options))
    engine = _engines.get(key)
    if engine is not None:
        return engine
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _create(make_url(url), busy_timeout_sec, sqlite_synchronous, dict(engine_options or {}))
            _engines[key] = engine
        return engine


def _options_key(options: dict[str, Any] | None) -> str:
    """A hashable, order-independent key for ``engine_options``, whose values may be dicts
    (``connect_args``) or lists; values JSON cannot hold are keyed by their ``repr``."""
    return json.dumps(options or {}, sort_keys=True, default=repr)


#: Seconds: a pooled Postgres connection checked in more recently than this is handed out
#: without a ping (a round trip), unless psycopg already knows it is lost.
PING_AFTER_IDLE_SEC = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """SQLAlchemy's ``pool_pre_ping``, for connections idle more than ``PING_AFTER_IDLE_SEC``
    only: a ping is a round trip, a third of a one-job enqueue's time. A connection used a
    moment ago is alive unless the server went away since (psycopg's ``broken``, once it
    noticed); one that went away unnoticed within that second fails its statement with an
    error (an ``EnqueueError`` for an enqueue: nothing is written), as after any outage."""
    from sqlalchemy.exc import DisconnectionError

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        record.info["unified_jobs_used"] = monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        used = record.info.pop("unified_jobs_used", None)
        if getattr(dbapi_conn, "broken", False) or getattr(dbapi_conn, "closed", False):
            raise DisconnectionError("the connection was lost")  # the pool connects anew
        if used is not None and monotonic() - used < PING_AFTER_IDLE_SEC:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            if engine.dialect.is_disconnect(exc, dbapi_conn, None):  # type: ignore[arg-type]
                raise DisconnectionError(str(exc)) from exc
            raise
        if not alive:
            raise DisconnectionError("the connection did not answer a ping")


def _create(url: URL, busy_timeout_sec: float, synchronous: str, options: dict[str, Any]) -> Engine:
    if url.get_backend_name() == "postgresql":
        # A server that does not answer fails the connect, not hangs it (libpq waits forever).
        url = make_url(with_timeouts(url.render_as_string(hide_password=False)))
        ping = options.pop("pool_pre_ping", None)
        options.setdefault("pool_size", 5)
        options.setdefault("max_overflow", 10)
        engine = create_engine(url, pool_pre_ping=bool(ping), **options)
        if ping is None:  # not set in queue.engine_options: ping only connections left idle
            _ping_when_idle(engine)
        return engine

    synchronous = synchronous.upper()
    if synchronous not in _SQLITE_SYNCHRONOUS:
        raise ValueError(f"sqlite_synchronous must be one of {_SQLITE_SYNCHRONOUS}, not {synchronous!r}")
    connect_args = dict(options.pop("connect_args", {}))
    connect_args.setdefault("timeout", busy_timeout_sec)
    connect_args.setdefault("check_same_thread", False)
    engine = create_engine(url, connect_args=connect_args, **options)
    busy_ms = int(busy_timeout_sec * 1000)

    def _on_connect(dbapi_conn: Any) -> None:
        # Manage transactions ourselves (see _on_begin) instead of the sqlite3 module.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute(f"PRAGMA synchronous = {synchronous}")
        cur.close()

    guard_forks(engine, _on_connect)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def guard_forks(engine: Engine, on_connect: Callable[[Any], None]) -> None:
    """A SQLite engine's connections are held in the fork guard while checked out, and while
    they connect and ``on_connect`` sets each new one up: no fork happens while a thread of
    this process is inside SQLite."""

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        with fork_guard.guard.held():
            dbapi_conn = dialect.connect(*cargs, **cparams)
            on_connect(dbapi_conn)
            return dbapi_conn

    @event.listens_for(engine, "checkout")
    def _checked_out(_dbapi_conn: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        record.info[_FORK_HOLD] = fork_guard.guard.enter()

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        ident = record.info.pop(_FORK_HOLD, None)
        if ident is not None:
            fork_guard.guard.leave(ident)


#: Where a checked-out connection's record keeps the ident of its fork guard hold.
_FORK_HOLD = "unified_jobs_fork_hold"


def _after_fork_in_child() -> None:
    # The parent's pooled connections are left alone (not closed: that would end the
    # parent's sessions); the child opens its own on demand. The lock may have been held
    # by a parent thread at fork time, so the child gets a new one.
    global _engines_lock
    _engines_lock = threading.Lock()
    for engine in list(_engines.values()):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
