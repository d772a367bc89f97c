"""A Celery worker running in a thread of the current process (for ``start --server-and-worker``)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING

from celery.worker import state as worker_state

if TYPE_CHECKING:
    from unified_jobs.jobs import Jobs

__all__ = ["EmbeddedWorker"]

logger = logging.getLogger(__name__)


class EmbeddedWorker:
    """Consumes the app's queues in a background thread, with a thread pool.

    ``stop()`` is a warm shutdown: jobs in progress finish; jobs the worker had reserved but not
    started are returned to the queue when its connection closes (acks_late).
    """

    def __init__(self, jobs: Jobs, *, concurrency: int, queues: list[str] | None = None) -> None:
        self.jobs = jobs
        self.queues = queues or jobs.celery_bridge().worker_queues()
        app = jobs.celery
        app.finalize()
        app.set_current()  # parts of the worker look tasks up on the current app, as `celery worker` sets it
        app.set_default()
        self._worker = app.WorkController(
            pool_cls="threads",
            concurrency=concurrency,
            queues=self.queues,
            hostname=f"embedded-{os.getpid()}@{socket.gethostname()}",
            without_mingle=True,
            without_gossip=True,
            loglevel="INFO",
        )
        self._thread = threading.Thread(
            target=self._worker.start, name="unified-jobs-embedded-worker", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        logger.info("embedded worker consuming %s", ", ".join(self.queues))

    def stop(self, timeout: float = 30.0) -> None:
        worker_state.should_stop = 0  # the consumer loop's warm-shutdown flag
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error(
                "embedded worker did not stop within %ss; unfinished jobs go back to the queue", timeout
            )
        worker_state.should_stop = None
