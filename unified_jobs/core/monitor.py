"""What the dashboard, the metrics and ``doctor --workers`` read from a job store: pages of
jobs by status with filters, queue statistics, throughput, and the workers' heartbeats.

Pure data; each job store implements the reads (``JobStore.jobs``, ``queue_stats``,
``throughput``, ``workers``) and ``record_heartbeat``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from unified_jobs.core.job import JobInfo, JobStatus

__all__ = ["SEARCH_LIMIT", "JobPage", "JobQuery", "QueueStats", "ThroughputBucket", "WorkerBeat"]

#: A query with a filter the store has no index for (text in the arguments on every store; a
#: worker on Redis and in memory) looks at no more than this many of the newest jobs of the
#: status asked, and says so (``JobPage.searched``) when it stopped there.
SEARCH_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Which jobs to list: every filter given must match.

    Newest first, by the time the job entered the state it is listed in: its enqueue (queued
    and scheduled; a scheduled job that fell due keeps its enqueue time), its start
    (processing), the end of the failed attempt (retrying), its end (completed, failed,
    cancelled).
    """

    #: One status, or ``None`` for every status.
    status: JobStatus | None = None
    #: A worker's name (the Celery task name).
    worker: str | None = None
    queue: str | None = None
    #: Text the job's arguments contain, case-insensitive for ASCII letters (others may
    #: compare case-sensitively). Matched against the arguments as the store keeps them: their
    #: JSON in memory and on Redis, the Celery message's body (args, kwargs and Celery's own
    #: options) on the SQL kinds. Search for values (a name, an id), not JSON punctuation,
    #: whose spacing differs between stores.
    text: str | None = None
    limit: int = 50
    offset: int = 0


@dataclass(slots=True)
class JobPage:
    """One page of a ``JobQuery``'s answer."""

    jobs: list[JobInfo]
    #: Whether more jobs match after this page.
    more: bool
    #: Set when the store stopped searching (``SEARCH_LIMIT``): how many jobs it looked at.
    searched: int | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue, as its job store counts it."""

    name: str
    #: Due now, waiting for a worker.
    queued: int = 0
    #: Waiting for their ``run_at``: delayed jobs, and retries (a retry counts here until its
    #: next attempt starts, its backoff over or not).
    scheduled: int = 0
    processing: int = 0
    failed: int = 0
    #: When the oldest job due now was enqueued (``None``: none waits).
    oldest_queued_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ThroughputBucket:
    """Jobs that ended in one minute (``start``, aware UTC)."""

    start: datetime
    completed: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    """A worker process' heartbeat, as it wrote it in the queue's store."""

    #: Unique per process: Celery's node name (``celery@host``) and the pid.
    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    #: Ids of the jobs it is running now.
    current: tuple[str, ...]
    started_at: datetime
    #: When it wrote this beat.
    beat_at: datetime
    #: When it last asked its queues for jobs (on RabbitMQ, which pushes: when its event loop
    #: last found its task consumer in place; see ``core.heartbeat``). ``None``: not since it
    #: started, or never (an in-process pool takes jobs from memory).
    polled_at: datetime | None = None
    #: ``"worker"`` (``unified-jobs start --worker``, ``celery worker``) or ``"in-process"``.
    kind: str = "worker"
    #: Seconds between beats: a beat older than about two of these is a dead worker.
    interval: float = 10.0
    extra: dict[str, str] = field(default_factory=dict)
