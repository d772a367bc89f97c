"""The heartbeat of a Celery worker process of a unified_jobs app: ``unified-jobs start
--worker``, a plain ``celery worker``, and the embedded worker of ``start
--server-and-worker`` alike.

A consumer bootstep (``HeartbeatStep``, added to the app's ``steps["consumer"]`` by
``install``) ties the beat to the worker's life in its main process: the first start of the
consumer (connected, the task consumer set up; the pool's processes already forked) starts the
thread; a restart after a lost connection only makes it beat at once, since a worker that lost
its broker is alive but not polling, which is what the beat is there to show; the consumer's
final ``shutdown`` (after a warm shutdown let the running jobs finish) stops it and removes
the beat. A step rather than Celery's ``worker_ready`` signal, which only ``celery worker``
sends, not an embedded ``WorkController``.

What a beat says (``core.monitor.WorkerBeat``): id ``<node name>:<pid>``, the host, the queues
the task consumer consumes now (``celery control cancel_consumer`` removes one), the
concurrency (an autoscaler's maximum), the ids of the requests the pool is running
(``celery.worker.state.active_requests``), and ``polled_at``, the last
``adapters.liveness.note_poll()`` of the process: each take (FETCH or BRPOP) on Redis, each drain of the SQL
transport, and on RabbitMQ each second of the event loop while a channel holds the task
consumer (``kinds/rabbitmq.py``). ``extra`` holds the node name, the pool, ``state``
(``running``, or ``stopping`` once a warm shutdown began: it then polls no more, on purpose),
and ``stale_after`` (``workers.stale_after``, for ``doctor --workers --heartbeat-file``).
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timezone
from typing import Any

from celery import Celery, bootsteps
from celery.worker import state as worker_state

from unified_jobs.adapters.celery.request import BRIDGE_ATTRIBUTE
from unified_jobs.adapters.heartbeat import Heartbeat, heartbeat_path
from unified_jobs.adapters.liveness import last_poll
from unified_jobs.core.heartbeat import STOPPING
from unified_jobs.core.job import utcnow
from unified_jobs.core.monitor import WorkerBeat

__all__ = ["HeartbeatStep", "install", "uninstall", "worker_beat"]

logger = logging.getLogger(__name__)


def install(app: Celery) -> None:
    """Make every worker of ``app`` write a heartbeat (before the worker is created)."""
    app.steps["consumer"].add(HeartbeatStep)


def uninstall(app: Celery) -> None:
    """Undo ``install`` (an adopted app given back)."""
    app.steps["consumer"].discard(HeartbeatStep)


class HeartbeatStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """See the module docstring."""

    label = "unified_jobs heartbeat"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.heartbeat: Heartbeat | None = None

    def start(self, c: Any) -> None:
        if self.heartbeat is not None:
            self.heartbeat.wake()  # connected again
            return
        bridge = getattr(c.app, BRIDGE_ATTRIBUTE, None)
        kind = getattr(bridge, "kind", None)
        if bridge is None or kind is None or bridge.config.workers.mode != "BackgroundQueue":
            return  # not a queue of ours: nowhere to write
        workers = bridge.config.workers
        started_at = utcnow()
        interval, stale_after = workers.heartbeat_interval, workers.stale_after
        self.heartbeat = Heartbeat(
            kind.store,
            lambda: worker_beat(c, started_at=started_at, interval=interval, stale_after=stale_after),
            interval,
            path=heartbeat_path(workers.heartbeat_file),
        ).start()
        logger.info("heartbeat of %s every %g s", c.hostname, interval)

    def stop(self, c: Any) -> None:
        # The connection was lost, or a shutdown began: say so now rather than in a while.
        if self.heartbeat is not None:
            self.heartbeat.wake()

    def shutdown(self, c: Any) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None


def worker_beat(c: Any, *, started_at: datetime, interval: float, stale_after: float) -> WorkerBeat:
    """The beat of the worker whose consumer is ``c``, now. Runs on the heartbeat thread:
    it only reads what the worker's main thread changes (see ``_running``)."""
    controller = c.controller
    concurrency = getattr(controller, "max_concurrency", None) or getattr(controller, "concurrency", 0)
    polled = last_poll()
    return WorkerBeat(
        id=f"{c.hostname}:{os.getpid()}",
        host=socket.gethostname(),
        pid=os.getpid(),
        queues=_queues(c),
        concurrency=int(concurrency or 0),
        current=_running(),
        started_at=started_at,
        beat_at=utcnow(),
        polled_at=datetime.fromtimestamp(polled, timezone.utc) if polled is not None else None,
        kind="worker",
        interval=interval,
        extra={
            "node": str(c.hostname),
            "pool": type(c.pool).__module__.rpartition(".")[2] if c.pool is not None else "",
            "state": STOPPING if _stopping() else "running",
            # its config's, for a probe that reads the heartbeat file without the config
            "stale_after": f"{stale_after:g}",
        },
    )


def _queues(c: Any) -> tuple[str, ...]:
    consumer = c.task_consumer
    if consumer is not None:
        names = [q.name for q in list(consumer.queues)]
    else:  # between connections: the queues it is to consume
        names = list(c.app.amqp.queues.consume_from or ())
    return tuple(sorted(dict.fromkeys(names)))


def _running() -> tuple[str, ...]:
    # A WeakSet the main thread adds to and removes from; iterating it on this thread can
    # meet a change ("Set changed size during iteration"): look again.
    for _ in range(5):
        try:
            return tuple(sorted(str(r.id) for r in list(worker_state.active_requests)))
        except RuntimeError:
            continue
    return ()


def _stopping() -> bool:
    # celery.worker.state.maybe_shutdown's reading of the flags (0 counts: EmbeddedWorker.stop).
    flags = (worker_state.should_stop, worker_state.should_terminate)
    return any(flag is not None and flag is not False for flag in flags)
