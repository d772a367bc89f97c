"""Unique jobs: the key a job holds while it waits or runs, and how long it holds it at most."""

from __future__ import annotations

import hashlib
from datetime import datetime

from unified_jobs.errors import InvalidOptionError

__all__ = ["KEY_LIMIT", "LINGER", "unique_key", "unique_seconds"]

#: Keys longer than this (the SQL column's width, with room for the worker's name) are hashed.
KEY_LIMIT = 200
#: Without ``Worker.unique_for``, a key given to ``perform_later`` is held until the job ends,
#: and at most this long (seconds) past the job's due time: a safety net for a job that is lost
#: without ending (a purged queue), never a limit a live job reaches.
LINGER = 86_400.0


def unique_key(worker: str, explicit: str | None, kwargs_json: str) -> str:
    """The key of a job of ``worker``: ``<worker>:<explicit key>``, or ``<worker>:args:<hash>``
    of the arguments' JSON (which pydantic writes the same way for equal arguments). Keys are
    per worker, so two workers never share one."""
    if explicit is None:
        key = f"{worker}:args:{hashlib.sha256(kwargs_json.encode()).hexdigest()[:32]}"
    elif not isinstance(explicit, str) or not explicit:
        raise InvalidOptionError(f"unique_key= takes a non-empty string, got {explicit!r}")
    else:
        key = f"{worker}:{explicit}"
    if len(key) > KEY_LIMIT:
        key = f"{worker[:100]}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return key


def unique_seconds(unique_for: float | None, run_at: datetime | None, now: datetime) -> float:
    """How long the key is held at most: ``unique_for``, or until ``LINGER`` past the due time."""
    if unique_for is not None:
        return unique_for
    wait = (run_at - now).total_seconds() if run_at is not None else 0.0
    return max(wait, 0.0) + LINGER
