"""The redis-py clients of the job stores and the schedule state, bounded by the queue's
``connect_timeout`` and ``read_timeout``: a server that does not answer is an error after one
timeout (the client retries nothing; redis-py's TCP keepalives find a connection dropped
while idle), not a hang; and ``PackedCalls``, the packed commands of the hot paths."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "DEFAULT_READ_TIMEOUT", "PackedCalls", "bounded_client", "pack_command"]

#: Seconds; the defaults of ``queue.connect_timeout`` and ``queue.read_timeout``.
DEFAULT_CONNECT_TIMEOUT = 0.5
DEFAULT_READ_TIMEOUT = 5.0


def bounded_client(
    url: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, read_timeout: float = DEFAULT_READ_TIMEOUT
) -> Any:
    """A ``redis.Redis`` for ``url`` (decoding responses) whose connects wait at most
    ``connect_timeout`` seconds and each answer at most ``read_timeout`` seconds."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=connect_timeout,
        socket_timeout=read_timeout,
        # redis-py 6+ retries a timed-out command 3 times by default: a hung server would
        # take 4 timeouts. A refused or reset connection (a restarting server) is retried.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2, supported_errors=(redis.ConnectionError,)),
    )


def pack_command(args: Sequence[str | bytes | int | float]) -> bytes:
    """``args`` as one RESP command, encoded as redis-py encodes them (``str`` as UTF-8,
    numbers by ``repr``), without its per-argument encoder."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            raw = arg.encode()
        elif isinstance(arg, bytes):
            raw = arg
        elif isinstance(arg, int | float) and not isinstance(arg, bool):
            raw = repr(arg).encode()
        else:
            raise TypeError(
                f"a Redis command argument must be str, bytes, int or float, not {type(arg).__name__}"
            )
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


class PackedCalls:
    """Commands packed by ``pack_command``, sent on connections of its own (made with the
    settings of ``pool``, a redis-py connection pool), and their replies: redis-py's call
    without its per-call machinery, for the hot paths (one job's enqueue, an attempt's start
    and outcome, a worker's ack). Taking a connection from redis-py's pool costs a ``recv`` to
    check that it has nothing unread; one of these never has: a call that did not read every
    reply drops its connection.

    Safe to share between threads (each call takes a connection of its own from a free list)
    and across ``fork`` (a child never uses its parent's sockets). A call raises as redis-py
    does (an error reply raises its ``ResponseError``) but retries nothing: on
    ``redis.ConnectionError`` the caller makes redis-py's own call, which retries it."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._connection_class = pool.connection_class
        self._connection_kwargs = dict(pool.connection_kwargs)
        self._free: list[Any] = []
        self._pid = os.getpid()

    def __call__(self, command: bytes, replies: int = 1) -> Any:
        """The reply to ``command``; or, for ``replies`` > 1 (that many commands packed
        together, sent in one write), the list of their replies."""
        if self._pid != os.getpid():  # a forked child: its parent's connections are not its own
            self._free, self._pid = [], os.getpid()
        try:
            conn = self._free.pop()
        except IndexError:
            conn = self._connection_class(**self._connection_kwargs)
        got: list[Any] = []
        try:
            conn.send_packed_command([command], check_health=False)
            while len(got) < replies:
                got.append(conn.read_response())
        except redis.ResponseError:
            # An error reply is a whole reply: the connection is fine if it was the last one
            # expected, else the replies after it are unread and it is dropped.
            if len(got) == replies - 1:
                self._free.append(conn)
            else:
                conn.disconnect()
            raise
        except BaseException:
            conn.disconnect()
            raise
        self._free.append(conn)
        return got[0] if replies == 1 else got

    def close(self) -> None:
        free, self._free = self._free, []
        if self._pid == os.getpid():
            for conn in free:
                conn.disconnect()
