"""What travels from ``perform_later`` to an adapter, what the caller gets back, and what a
job store tells about a job."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, get_args

__all__ = [
    "FINISHED",
    "STATUSES",
    "TAGS_HEADER",
    "Job",
    "JobHandle",
    "JobInfo",
    "JobStatus",
    "aware",
    "new_job_id",
    "utcnow",
]

#: A job's state, with Loco's names plus ``scheduled`` (waiting for its ``run_at``) and
#: ``retrying`` (an attempt failed; the next one waits for its backoff).
JobStatus = Literal["queued", "scheduled", "processing", "retrying", "completed", "failed", "cancelled"]
#: Every status, in the order of a job's life.
STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
#: The statuses a job never leaves by itself.
FINISHED: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

#: The message header holding the worker's tags, so they travel with the job (``jobs dump``).
TAGS_HEADER = "unified_jobs_tags"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (a naive one is read as UTC, as Celery and SQLite do)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


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
    #: Which try this is: 1 for the first, 2 for the first retry.
    attempt: int = 1

    def handle(self) -> JobHandle:
        return JobHandle(self.id, self.name, self.queue, self.run_at, self.priority)


@dataclass(slots=True)
class JobInfo:
    """What a job store knows of one job (``jobs.job(handle)``); times are aware UTC."""

    id: str
    worker: str
    queue: str
    #: The arguments as JSON-compatible data (the worker's model, dumped).
    args: Any
    status: JobStatus
    #: Attempts started so far (a queued job: 0; a job retried twice and running: 3).
    attempts: int = 0
    #: ``"ExceptionType: message"`` of the last failed attempt, or ``None``.
    last_error: str | None = None
    #: The traceback of the last failed attempt, or ``None``.
    traceback: str | None = None
    enqueued_at: datetime | None = None
    run_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    priority: int | None = None
