"""A worker process' scheduler thread, tied to the Celery worker's life: started on
``worker_ready`` (in the worker's main process, once its pool is up) and stopped on
``worker_shutting_down`` / ``worker_shutdown``. Used by ``unified-jobs start --worker``.

The prefork pool may still fork a process while the thread runs a pass (a replacement for a
process that died, ``--max-tasks-per-child``); a child never runs the thread, and what the
thread may hold at that moment is reset in the child: the SQL engines' pools and locks
(``adapters/sql/engine.py``) and redis-py's connections (which check their pid).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import signals

__all__ = ["with_worker"]


def with_worker(app: Any, start: Callable[[], None], stop: Callable[[], None]) -> None:
    """Call ``start()`` when a worker of ``app`` in this process is ready, ``stop()`` when it
    shuts down."""

    def ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is app:
            start()

    def shutting_down(sender: Any = None, **_: Any) -> None:
        stop()

    signals.worker_ready.connect(ready, weak=False)
    signals.worker_shutting_down.connect(shutting_down, weak=False)
    signals.worker_shutdown.connect(shutting_down, weak=False)
