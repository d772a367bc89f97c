"""What travels from ``perform_later`` to an adapter, and what the caller gets back."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

__all__ = ["Job", "JobHandle", "JobStatus", "StatusBook", "new_job_id", "utcnow"]

#: A job's state, with Loco's names.
JobStatus = Literal["queued", "processing", "completed", "failed", "cancelled"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_job_id() -> str:
    """A unique job id; the same form as Celery's task ids (a UUID4 string)."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class JobHandle:
    """Returned by ``perform_later``: which job was enqueued, and where."""

    #: Unique id; with BackgroundQueue it is the Celery task id.
    id: str
    #: The worker's ``name`` (the Celery task name).
    worker: str
    #: The queue the job went to.
    queue: str
    #: When the job becomes due (UTC), or ``None`` for "now".
    run_at: datetime | None = None
    #: The priority asked for, or ``None`` for the default.
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """An enqueued job as adapters see it: Celery's (args, kwargs) as JSON text.

    A ``Worker`` job has ``args_json == "[]"`` and the arguments model's JSON as
    ``kwargs_json``, which is exactly the body of the Celery message it becomes.
    """

    id: str
    name: str
    queue: str
    kwargs_json: str
    args_json: str = "[]"
    priority: int | None = None
    run_at: datetime | None = None
    enqueued_at: datetime = field(default_factory=utcnow)
    #: Adapter-specific JSON object (an adopted Celery task's callbacks and chain).
    extra_json: str = "{}"

    def handle(self) -> JobHandle:
        return JobHandle(self.id, self.name, self.queue, self.run_at, self.priority)


class StatusBook:
    """The last ``size`` jobs' statuses, for adapters that keep no job store of their own."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._statuses: OrderedDict[str, JobStatus] = OrderedDict()

    def set(self, job_id: str, status: JobStatus) -> None:
        with self._lock:
            self._statuses[job_id] = status
            self._statuses.move_to_end(job_id)
            while len(self._statuses) > self._size:
                self._statuses.popitem(last=False)

    def get(self, job_id: str) -> JobStatus | None:
        with self._lock:
            return self._statuses.get(job_id)
