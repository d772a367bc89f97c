"""taskiq on Redis: taskiq-redis' ``RedisStreamBroker`` (a Redis stream read by a consumer group,
the broker with acknowledgements; ``ListQueueBroker`` has none). ``consumer_id="0"``: a consumer
group created by a worker started on queued jobs reads them too (the default ``$`` would skip
them). The no-op task is ``bench.taskiq_noop``, a plain function (taskiq runs it in a thread)."""

from __future__ import annotations

from taskiq_redis import RedisStreamBroker

from bench.peers import settings
from bench.queue_harness import note

broker = RedisStreamBroker(url=settings.redis_url(), queue_name="bench-taskiq", consumer_id="0")


@broker.task(task_name="bench.taskiq_noop")
def noop(sent: float) -> None:
    note(sent)
