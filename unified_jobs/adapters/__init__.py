"""Adapters: one module per mode, and the Celery package for the queue kinds, all with the
interface of ``base.Adapter``. ``build`` is the one mode -> adapter table, and
``celery_bridge`` makes the Celery side; ``Jobs`` imports nothing else of this package but
``base``, so no concrete adapter is imported before its mode is used.

This package is the only place that imports celery, kombu, redis or database drivers
(``tests/unit/test_layers.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unified_jobs.adapters.base import Adapter
    from unified_jobs.adapters.celery.app import CeleryBridge
    from unified_jobs.config import Config
    from unified_jobs.core.executor import Executor

__all__ = ["build", "celery_bridge"]


def build(
    mode: str, config: Config, executor: Executor, bridge: Callable[[], CeleryBridge] | None = None
) -> Adapter:
    """The adapter of ``mode``; ``bridge`` makes the Celery side (BackgroundQueue only)."""
    keep = config.workers.keep_completed
    if mode == "ForegroundBlocking":
        from unified_jobs.adapters.inline import InlineAdapter
        from unified_jobs.adapters.memory_store import MemoryJobStore

        return InlineAdapter(executor, MemoryJobStore(keep))
    if mode == "BackgroundAsync":
        from unified_jobs.adapters.inprocess import InProcessAdapter
        from unified_jobs.adapters.memory_store import MemoryJobStore

        workers = config.workers
        return InProcessAdapter(
            executor,
            workers.concurrency,
            workers.shutdown_timeout,
            MemoryJobStore(keep),
            heartbeat_interval=workers.heartbeat_interval,
        )
    if mode == "BackgroundQueue":
        from unified_jobs.adapters.celery.adapter import CeleryQueueAdapter

        assert bridge is not None and config.queue is not None
        return CeleryQueueAdapter(bridge(), executor)
    raise ValueError(f"unknown mode {mode!r}")


def celery_bridge(
    config: Config, executor: Executor, existing: Any, current_adapter: Callable[[], Adapter]
) -> CeleryBridge:
    """The Celery side of an app: its own Celery app, or ``existing`` adopted."""
    from unified_jobs.adapters.celery.app import CeleryBridge

    return CeleryBridge(config, executor, existing, current_adapter=current_adapter)
