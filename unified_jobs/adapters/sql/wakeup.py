"""Waking idle consumers: Postgres LISTEN/NOTIFY, SQLite's datagram sockets, and in-process
pokes for any dialect.

A consumer waits on a ``threading.Event``. These set it: a NOTIFY from the database (a
trigger fires one whenever a row becomes queued, see ``schema.py``); on SQLite, which has no
NOTIFY, a datagram from another process on the same machine that committed an enqueue on the
same table (``SocketListener``, ``poke_machine``); an enqueue by this same process on the same
table (no round trip through anything); and the consumer's own acks (a free prefetch slot).
Control messages (remote control, ``broadcast.py``) have their own NOTIFY channel and pokes,
so that they do not make job consumers poll, nor jobs make control consumers poll.

SQLite's sockets: each consumer binds a Unix datagram socket in a folder of the table's own
(``socket_folder``: the database file's real path and the table prefix, hashed, under
``$XDG_RUNTIME_DIR`` or the temp folder, per user). A producer sends one byte to every socket
there after its commit; a socket nobody reads any more (its process died) is removed by the
first producer that meets it. Only a poke: a consumer that misses one (another user, another
machine on a network file system, a full socket buffer) finds the job at its next poll.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import tempfile
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from time import monotonic
from typing import Any

from sqlalchemy.engine import make_url

__all__ = [
    "PgListener",
    "SocketListener",
    "poke_local",
    "poke_machine",
    "register_local",
    "socket_folder",
    "unregister_local",
]

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


# -- SQLite: datagram sockets between processes of one machine ------------------------------

#: Seconds a producer keeps its listing of a folder's sockets (a consumer started meanwhile
#: is poked from the next listing on; until then it finds jobs by polling).
LISTING_TTL = 1.0


def socket_folder(database: str, table_prefix: str) -> Path:
    """The folder of the sockets of the consumers of that SQLite file's tables: short (a Unix
    socket's path has at most 107 bytes), private to the user."""
    key = hashlib.sha1(f"{os.path.realpath(database)}\0{table_prefix}".encode()).hexdigest()[:16]
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"unified_jobs-{os.getuid()}" / key


class SocketListener(threading.Thread):
    """A consumer's socket in ``folder``: each datagram calls ``on_poke``. ``stop`` closes and
    removes it."""

    def __init__(self, folder: Path, on_poke: Callable[[], None]) -> None:
        super().__init__(name="unified_jobs-sqlite-wakeup", daemon=True)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = folder / f"{os.getpid()}-{id(self):x}"
        self._on_poke = on_poke
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(1.0)
        self._stopped = False

    def run(self) -> None:
        while not self._stopped:
            try:
                self._sock.recv(64)
            except TimeoutError:
                continue
            except OSError:  # closed by stop()
                return
            self._on_poke()

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._sock.close()


class _Poker:
    """Sends the pokes of this process to one folder's sockets."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._peers: list[str] = []
        self._listed_at = -LISTING_TTL

    def poke(self) -> None:
        now = monotonic()
        if now - self._listed_at >= LISTING_TTL:
            try:
                self._peers = [str(self.folder / name) for name in os.listdir(self.folder)]
            except OSError:  # no consumer ever started here
                self._peers = []
            self._listed_at = now
        for peer in list(self._peers):
            try:
                self._sock.sendto(b"!", peer)
            except BlockingIOError:
                pass  # its buffer is full of pokes: it is being woken anyway
            except (ConnectionRefusedError, FileNotFoundError):
                self._forget(peer)
            except OSError:
                logger.debug("could not poke the consumer at %s", peer, exc_info=True)

    def _forget(self, peer: str) -> None:
        """A socket nobody reads (its process died): removed, so nobody tries it again."""
        with contextlib.suppress(OSError):
            os.unlink(peer)
        with contextlib.suppress(ValueError):
            self._peers.remove(peer)


_pokers: dict[Path, _Poker] = {}
_pokers_lock = threading.Lock()


def poke_machine(folder: Path) -> None:
    """Wake the consumers of other processes on this machine whose sockets are in ``folder``
    (an enqueue on their table was committed)."""
    poker = _pokers.get(folder)
    if poker is None:
        with _pokers_lock:
            poker = _pokers.setdefault(folder, _Poker(folder))
    with _pokers_lock:  # its listing is shared by this process's threads
        poker.poke()


def _after_fork_in_child() -> None:
    global _pokers_lock
    _pokers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
