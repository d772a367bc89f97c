"""What travels from ``perform_later`` to an adapter, and what the caller gets back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

__all__ = ["Job", "JobHandle", "new_job_id", "utcnow"]


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
