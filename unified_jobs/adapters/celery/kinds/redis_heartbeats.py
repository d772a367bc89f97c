"""Heartbeats in Redis: the ``JobStore`` heartbeat methods of ``RedisJobStore`` (the Redis
kind, and the RabbitMQ kind's ``queue.store_uri``).

A hash per worker, ``unified_jobs:worker:<id>``, that expires on its own (``KEEP_INTERVALS``
of the worker's interval: ``core.heartbeat.expires_at``), and a sorted set of the worker ids,
``unified_jobs:workers``, scored by that expiry (epoch seconds), so that listing the workers
needs no ``SCAN``. Each beat replaces the hash and trims the index, in one MULTI/EXEC; a read
trims the index too, and drops the ids whose hash is gone.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import datetime
from typing import Any

from unified_jobs.core.heartbeat import expires_at
from unified_jobs.core.job import aware
from unified_jobs.core.monitor import WorkerBeat

__all__ = ["WORKERS_INDEX", "WORKER_PREFIX", "RedisHeartbeats"]

logger = logging.getLogger(__name__)

WORKER_PREFIX = "unified_jobs:worker:"
WORKERS_INDEX = "unified_jobs:workers"


class RedisHeartbeats:
    """Mixed into ``RedisJobStore`` (before ``JobStore``); uses its ``client`` (a redis-py
    client that decodes responses)."""

    client: Any

    def record_heartbeat(self, beat: WorkerBeat) -> None:
        key = WORKER_PREFIX + beat.id
        expires = expires_at(beat).timestamp()
        # The hash's own TTL is relative (the server's clock); the index score is absolute
        # (the worker's), and is only trimmed by, so a skew of seconds changes nothing.
        keep_ms = max(1000, math.ceil((expires - beat.beat_at.timestamp()) * 1000))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=_fields(beat))
        pipe.pexpire(key, keep_ms)
        pipe.zadd(WORKERS_INDEX, {beat.id: expires})
        pipe.zremrangebyscore(WORKERS_INDEX, "-inf", time.time())
        pipe.execute()

    def forget_worker(self, worker_id: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(WORKER_PREFIX + worker_id)
        pipe.zrem(WORKERS_INDEX, worker_id)
        pipe.execute()

    def workers(self) -> list[WorkerBeat]:
        self.client.zremrangebyscore(WORKERS_INDEX, "-inf", time.time())
        ids: list[str] = self.client.zrange(WORKERS_INDEX, 0, -1)
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for worker_id in ids:
            pipe.hgetall(WORKER_PREFIX + worker_id)
        beats: list[WorkerBeat] = []
        expired: list[str] = []
        for worker_id, fields in zip(ids, pipe.execute(), strict=True):
            if not fields:
                expired.append(worker_id)
                continue
            try:
                beats.append(_beat(fields))
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("skipping the unreadable heartbeat %s%s: %r", WORKER_PREFIX, worker_id, exc)
        if expired:
            self.client.zrem(WORKERS_INDEX, *expired)
        return sorted(beats, key=lambda beat: beat.id)


def _fields(beat: WorkerBeat) -> dict[str, str | int | float]:
    return {
        "id": beat.id,
        "host": beat.host,
        "pid": beat.pid,
        "kind": beat.kind,
        "queues": json.dumps(list(beat.queues)),
        "concurrency": beat.concurrency,
        "current": json.dumps(list(beat.current)),
        "started_at": beat.started_at.isoformat(),
        "beat_at": beat.beat_at.isoformat(),
        "polled_at": beat.polled_at.isoformat() if beat.polled_at is not None else "",
        "interval": beat.interval,
        "extra": json.dumps(beat.extra),
    }


def _beat(fields: dict[str, str]) -> WorkerBeat:
    polled = fields.get("polled_at")
    return WorkerBeat(
        id=fields["id"],
        host=fields["host"],
        pid=int(fields["pid"]),
        kind=fields.get("kind") or "worker",
        queues=tuple(json.loads(fields["queues"])),
        concurrency=int(fields["concurrency"]),
        current=tuple(json.loads(fields["current"])),
        started_at=aware(datetime.fromisoformat(fields["started_at"])),
        beat_at=aware(datetime.fromisoformat(fields["beat_at"])),
        polled_at=aware(datetime.fromisoformat(polled)) if polled else None,
        interval=float(fields["interval"]),
        extra=json.loads(fields.get("extra") or "{}"),
    )
