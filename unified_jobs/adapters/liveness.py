"""When this process last asked its queues for jobs: the consumer's transports stamp it on
every poll, and the heartbeat (``WorkerBeat.polled_at``) carries it, so that ``doctor
--workers`` can tell a worker that is alive but stopped consuming (Celery's stall after a
broker reconnect) from a healthy one.

A float assignment per poll: no lock (the GIL makes it atomic), no clock call beyond
``time.time()``.
"""

from __future__ import annotations

import time

__all__ = ["last_poll", "note_poll"]

_last_poll: float | None = None


def note_poll() -> None:
    """A consumer of this process asked (or is asking) its queues for jobs."""
    global _last_poll
    _last_poll = time.time()


def last_poll() -> float | None:
    """``time.time()`` of the last ``note_poll`` in this process, or ``None`` if none."""
    return _last_poll
