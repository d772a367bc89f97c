"""The redis-py clients of the job stores and the schedule state, bounded by the queue's
``connect_timeout`` and ``read_timeout``: a server that does not answer is an error after one
timeout (the client retries nothing; redis-py's TCP keepalives find a connection dropped
while idle), not a hang."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "DEFAULT_READ_TIMEOUT", "bounded_client"]

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
