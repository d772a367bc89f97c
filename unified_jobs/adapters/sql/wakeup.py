"""Waking idle consumers: Postgres LISTEN/NOTIFY, and in-process pokes for any dialect.

A consumer waits on a ``threading.Event``. Three things set it: a NOTIFY from the database
(a trigger fires one whenever a row becomes queued, see ``schema.py``), an enqueue by this
same process on the same table (no round trip through the database), and the consumer's own
acks (a free prefetch slot). Control messages (remote control, ``broadcast.py``) have their
own NOTIFY channel and pokes, so that they do not make job consumers poll, nor jobs make
control consumers poll.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
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


def poke_local(key: tuple[str, str], control: Sequence[str] = ()) -> None:
    """Wake the consumers of this process that read the table ``key`` names: of jobs, or with
    ``control``, those of these control queues (``waiter.poke_control(queues)``)."""
    waiters = _local.get(key)
    if waiters:
        for waiter in list(waiters):
            if control:
                waiter.poke_control(control)
            else:
                waiter.wakeup.set()


class PgListener(threading.Thread):
    """LISTENs on some channels and calls each one's handler with every notification's
    payload; reconnects on loss.

    After (re)connecting it calls ``on_connect`` too, since notifications sent while it was
    away are lost.
    """

    def __init__(
        self,
        sqlalchemy_url: str,
        channels: Mapping[str, Callable[[str], None]],
        on_connect: Callable[[], None],
    ) -> None:
        super().__init__(name=f"unified_jobs-listen-{next(iter(channels))}", daemon=True)
        self._conninfo = (
            make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self._channels = dict(channels)
        self._on_connect = on_connect
        self._stop_event = threading.Event()
        self.connected = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        import psycopg
        from psycopg import sql

        names = ", ".join(self._channels)
        while not self._stop_event.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    for channel in self._channels:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.connected.set()
                    self._on_connect()
                    while not self._stop_event.is_set():
                        for note in conn.notifies(timeout=0.5):
                            handler = self._channels.get(note.channel)
                            if handler is not None:
                                handler(note.payload)
            except Exception:
                self.connected.clear()
                if self._stop_event.is_set():
                    return
                logger.warning("LISTEN connection for %s lost; retrying in 1 s", names, exc_info=True)
                self._on_connect()
                self._stop_event.wait(1.0)
