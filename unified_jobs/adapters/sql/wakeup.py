"""Waking idle consumers: Postgres LISTEN/NOTIFY, and in-process pokes for any dialect.

A consumer waits on a ``threading.Event``. Three things set it: a NOTIFY from the database
(a trigger fires one whenever a row becomes queued, see ``schema.py``), an enqueue by this
same process on the same table (no round trip through the database), and the consumer's own
acks (a free prefetch slot).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from sqlalchemy.engine import make_url

__all__ = ["PgListener", "poke_local", "register_local", "unregister_local"]

logger = logging.getLogger(__name__)

_local: dict[tuple[str, str], weakref.WeakSet[Any]] = {}
_local_lock = threading.Lock()


def register_local(key: tuple[str, str], waiter: Any) -> None:
    """Have ``poke_local(key)`` set ``waiter.wakeup`` (a ``threading.Event``)."""
    with _local_lock:
        _local.setdefault(key, weakref.WeakSet()).add(waiter)


def unregister_local(key: tuple[str, str], waiter: Any) -> None:
    with _local_lock:
        waiters = _local.get(key)
        if waiters is not None:
            waiters.discard(waiter)


def poke_local(key: tuple[str, str]) -> None:
    """Wake the consumers of this process that read the table ``key`` names."""
    waiters = _local.get(key)
    if waiters:
        for waiter in list(waiters):
            waiter.wakeup.set()


class PgListener(threading.Thread):
    """LISTENs on one channel and sets ``wakeup`` on every notification; reconnects on loss.

    After (re)connecting it sets ``wakeup`` once too, since notifications sent while it was
    away are lost.
    """

    def __init__(self, sqlalchemy_url: str, channel: str, wakeup: threading.Event) -> None:
        super().__init__(name=f"unified_jobs-listen-{channel}", daemon=True)
        self._conninfo = (
            make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self._channel = channel
        self._wakeup = wakeup
        self._stop_event = threading.Event()
        self.connected = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        import psycopg
        from psycopg import sql

        while not self._stop_event.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self.connected.set()
                    self._wakeup.set()
                    while not self._stop_event.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self._wakeup.set()
            except Exception:
                self.connected.clear()
                if self._stop_event.is_set():
                    return
                logger.warning("LISTEN connection for %s lost; retrying in 1 s", self._channel, exc_info=True)
                self._wakeup.set()
                self._stop_event.wait(1.0)
