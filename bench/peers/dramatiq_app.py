"""dramatiq on Redis (its ``RedisBroker``, default middleware), with the no-op actor
``bench_dramatiq_noop`` on the queue bench-dramatiq (no retries)."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peers import settings
from bench.queue_harness import note

broker = RedisBroker(url=settings.redis_url())
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_dramatiq_noop", queue_name="bench-dramatiq", max_retries=0)
def noop(sent: float) -> None:
    note(sent)
