"""Heartbeats in memory: the ``JobStore`` heartbeat methods of ``MemoryJobStore``, where the
BackgroundAsync pool writes its own beat (kind ``in-process``), for a dashboard in the same
process. Other processes cannot see them.

A dict of beats by worker id, made on first use. No lock: one dict assignment, ``pop`` or
``list()`` each, which the GIL makes atomic; beats are frozen, so a reader never sees one
half written. Expired beats are dropped on every write and read.
"""

from __future__ import annotations

from unified_jobs.core.heartbeat import expires_at
from unified_jobs.core.job import utcnow
from unified_jobs.core.monitor import WorkerBeat

__all__ = ["MemoryHeartbeats"]


class MemoryHeartbeats:
    """Mixed into ``MemoryJobStore`` (before ``JobStore``, whose methods it replaces)."""

    def _beats(self) -> dict[str, WorkerBeat]:
        # Made here, not in __init__: the store's constructor is not this mixin's.
        beats: dict[str, WorkerBeat] | None = self.__dict__.get("_heartbeats")
        if beats is None:
            beats = self.__dict__.setdefault("_heartbeats", {})
        return beats

    def record_heartbeat(self, beat: WorkerBeat) -> None:
        beats = self._beats()
        _drop_expired(beats)
        beats[beat.id] = beat

    def forget_worker(self, worker_id: str) -> None:
        self._beats().pop(worker_id, None)

    def workers(self) -> list[WorkerBeat]:
        beats = self._beats()
        _drop_expired(beats)
        return sorted(beats.values(), key=lambda beat: beat.id)


def _drop_expired(beats: dict[str, WorkerBeat]) -> None:
    now = utcnow()
    for worker_id, beat in list(beats.items()):
        if expires_at(beat) < now and beats.get(worker_id) is beat:
            beats.pop(worker_id, None)
