"""Queue kinds as plug-ins: each module gives a ``QueueKind`` (broker settings, priority
mapping, job store, delivery counting). Adding a kind is one module and one entry here."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unified_jobs.config import QueueConfig, WorkersConfig
    from unified_jobs.core.store import JobStore

__all__ = ["KINDS", "QueueKind", "kind_for"]

#: Kind name (``queue.kind``) -> ``module:attribute`` of its ``QueueKind``.
KINDS: dict[str, str] = {
    "Redis": "unified_jobs.adapters.celery.kinds.redis:RedisKind",
    "Postgres": "unified_jobs.adapters.celery.kinds.sql:SqlKind",
    "Sqlite": "unified_jobs.adapters.celery.kinds.sql:SqlKind",
}


class QueueKind(ABC):
    """What differs between queue kinds, and nothing else."""

    def __init__(self, queue: QueueConfig, workers: WorkersConfig) -> None:
        self.queue = queue
        self.workers = workers
        self._store: JobStore | None = None

    @abstractmethod
    def broker_settings(self) -> dict[str, Any]:
        """``broker_url`` and ``broker_transport_options`` for Celery."""

    def publish_priority(self, priority: int) -> int:
        """Our priority (0-9, higher first) as the broker's message priority."""
        return priority

    @abstractmethod
    def make_store(self) -> JobStore:
        """The kind's job store."""

    @property
    def store(self) -> JobStore:
        if self._store is None:
            self._store = self.make_store()
        return self._store

    @abstractmethod
    def lost_deliveries(self, task_id: str, delivery_tag: Any) -> int:
        """Called in the worker's main process when a job's pool process died: how many of the
        job's deliveries have now ended so (this one included)."""


def kind_for(queue: QueueConfig, workers: WorkersConfig) -> QueueKind:
    module, _, attr = KINDS[queue.kind].partition(":")
    cls: type[QueueKind] = getattr(importlib.import_module(module), attr)
    return cls(queue, workers)
