"""The job store of the in-process modes (and of the test recorder): a dict in memory.

Failed and cancelled jobs stay until discarded; finished ones are forgotten after
``keep_completed`` seconds or past the newest ``size`` of them, whichever comes first.

The lifecycle hooks run once or twice per job on the pool's hot path, so a job is kept as a
small mutable record holding the ``Job`` as it was enqueued, with times as ``time.time()``
floats; the ``JobInfo`` (the arguments parsed from JSON, aware datetimes) is built only when
someone reads it, and every read gets a fresh copy.

The monitor reads (``jobs``, ``status_counts``, ``queue_stats``) look at every record: there
is no index to keep up on the hot path, and an in-process store holds thousands of jobs, not
millions. Throughput is counted per minute under the stripe lock each outcome takes anyway.
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime, timezone

from unified_jobs.adapters.memory_heartbeats import MemoryHeartbeats
from unified_jobs.core.job import Job, JobInfo, JobStatus
from unified_jobs.core.monitor import SEARCH_LIMIT, JobPage, JobQuery, QueueStats, ThroughputBucket
from unified_jobs.core.outcome import Outcome, result_json
from unified_jobs.core.store import JobStore, StartCheck

__all__ = ["MemoryJobStore"]

_SETTLED: dict[str, JobStatus] = {
    "succeeded": "completed",
    "retry": "retrying",
    "failed": "failed",
    "rejected": "failed",
    "cancelled": "cancelled",
}
_TRIM_BATCH = 256
_STRIPES = 64
_STRIPE_MASK = _STRIPES - 1
# StartCheck is frozen: one of each is enough.
_STARTED = StartCheck(deliveries=1)
_CANCELLED = StartCheck(cancelled=True)
#: Minutes of throughput kept (``throughput`` reads older minutes as 0).
THROUGHPUT_MINUTES = 65


class _Record:
    """What the store knows of one job, as written by the lifecycle hooks."""

    __slots__ = (
        "attempts",
        "changed",
        "error_class",
        "finished",
        "job",
        "last_error",
        "result",
        "run_at",
        "source",
        "started",
        "status",
        "traceback",
    )

    def __init__(self, job: Job, status: JobStatus) -> None:
        self.job = job  # as first enqueued: id, worker, queue, args, enqueued_at, priority
        self.source = job  # as last enqueued: what ``retry`` enqueues again
        self.status = status
        self.attempts = 0
        self.last_error: str | None = None
        self.traceback: str | None = None
        self.error_class: str | None = None
        #: The result's JSON text (``result_json``), parsed anew by every read.
        self.result: str | None = None
        self.run_at = job.run_at
        self.started: float | None = None  # time.time()
        self.finished: float | None = None
        #: time.time() of the last change of status: what the monitor reads sort by.
        self.changed = time.time()

    def status_at(self, now: datetime) -> JobStatus:
        """The status as reads report it: a scheduled job that fell due is queued."""
        status = self.status
        if status == "scheduled" and (self.run_at is None or self.run_at <= now):
            return "queued"
        return status

    def info(self, now: datetime | None = None) -> JobInfo:
        job = self.job
        return JobInfo(
            id=job.id,
            worker=job.name,
            queue=job.queue,
            args=_args_of(job),
            status=self.status_at(now or datetime.now(timezone.utc)),
            attempts=self.attempts,
            last_error=self.last_error,
            traceback=self.traceback,
            enqueued_at=job.enqueued_at,
            run_at=self.run_at,
            started_at=_aware(self.started),
            finished_at=_aware(self.finished),
            priority=job.priority,
            result=json.loads(self.result) if self.result is not None else None,
            error_class=self.error_class,
        )


class MemoryJobStore(MemoryHeartbeats, JobStore):
    """Thread-safe. The lifecycle hooks of different jobs take no common lock: each job's
    changes are made under one of ``_STRIPES`` locks picked by its id, and adding a job is one
    (atomic) dict assignment. A lock every job on every thread takes turns, under the GIL, into
    a convoy that costs a thread switch per acquisition; the store-wide lock is left to what is
    rare: reads, forgetting expired jobs (in batches), discarding, an id enqueued again.
    """

    can_run_now = True

    def __init__(self, keep_completed: float = 86_400.0, size: int = 10_000) -> None:
        self._keep = keep_completed
        self._size = size
        self._lock = threading.Lock()
        self._stripes = tuple(threading.Lock() for _ in range(_STRIPES))
        self._jobs: dict[str, _Record] = {}
        self._completed: OrderedDict[str, float] = OrderedDict()  # id -> monotonic finish time
        # Jobs ended per minute, one table per stripe (written under its lock):
        # minute (epoch // 60) -> [completed, failed].
        self._ended: tuple[dict[int, list[int]], ...] = tuple({} for _ in range(_STRIPES))
        # Unique jobs, under self._lock: key -> (holder's id, monotonic expiry); id -> key.
        self._unique: dict[str, tuple[str, float]] = {}
        self._unique_of: dict[str, str] = {}
        _stores.add(self)

    def _after_fork(self) -> None:
        # A thread of the parent may have held a lock at the fork; none runs here.
        self._lock = threading.Lock()
        self._stripes = tuple(threading.Lock() for _ in range(_STRIPES))

    def _stripe(self, job_id: str) -> threading.Lock:
        return self._stripes[hash(job_id) & _STRIPE_MASK]

    # -- reads -------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobInfo | None:
        with self._lock:
            self._expire(time.monotonic())
            record = self._jobs.get(job_id)
            if record is None:
                return None
            with self._stripe(job_id):
                return record.info()

    def failed(self, worker: str | None = None, limit: int = 100) -> list[JobInfo]:
        found: list[JobInfo] = []
        for record in list(self._jobs.values()):  # list() of a dict is atomic
            if record.status == "failed" and worker in (None, record.job.name):
                with self._stripe(record.job.id):
                    if record.status == "failed":
                        found.append(record.info())
        now = datetime.now(timezone.utc)
        found.sort(key=lambda i: i.finished_at or i.enqueued_at or now, reverse=True)
        return found[:limit]

    def source(self, job_id: str) -> Job | None:
        """The job as it was enqueued (for ``retry``); ``None`` once it completed."""
        record = self._jobs.get(job_id)
        if record is None:
            return None
        with self._stripe(job_id):
            return record.source if record.status != "completed" else None

    # -- changes -----------------------------------------------------------------------------

    def discard(self, job_id: str) -> bool:
        with self._lock, self._stripe(job_id):
            record = self._jobs.get(job_id)
            if record is None or record.status not in ("failed", "cancelled"):
                return False
            del self._jobs[job_id]
            self._release(job_id)
            return True

    def cancel(self, job_id: str) -> bool:
        record = self._jobs.get(job_id)
        if record is None:
            return False
        with self._stripe(job_id):
            if record.status not in ("queued", "scheduled", "retrying"):
                return False
            record.status = "cancelled"
            record.finished = record.changed = time.time()
        if self._unique_of:
            with self._lock:
                self._release(job_id)
        return True

    def run_now(self, job_id: str) -> bool:
        """The record only: the pool that holds a delayed job (``InProcessAdapter``) moves it
        itself; the test recorder runs every job when asked anyway."""
        record = self._jobs.get(job_id)
        if record is None:
            return False
        now = datetime.now(timezone.utc)
        with self._stripe(job_id):
            due = record.run_at
            if record.status not in ("scheduled", "retrying") or due is None or due <= now:
                return False
            record.run_at = now  # a scheduled job is queued now; a retry stays retrying
            if record.status == "scheduled":
                record.status = "queued"
        return True

    # -- unique jobs -------------------------------------------------------------------------

    def claim_unique(self, jobs: Sequence[Job]) -> dict[str, str]:
        refused: dict[str, str] = {}
        now = time.monotonic()
        with self._lock:
            for job in jobs:
                key = job.unique_key
                if key is None:
                    continue
                held = self._unique.get(key)
                if held is not None:
                    holder, expires = held
                    if holder != job.id and expires > now and self._holds(holder):
                        refused[job.id] = holder
                        continue
                    self._unique_of.pop(holder, None)
                self._unique[key] = (job.id, now + (job.unique_for or 0.0))
                self._unique_of[job.id] = key
        return refused

    def _holds(self, job_id: str) -> bool:
        # Under self._lock. A job not recorded yet is being enqueued: it holds its key.
        record = self._jobs.get(job_id)
        return record is None or record.status not in ("completed", "failed", "cancelled")

    def release_unique(self, jobs: Sequence[Job]) -> None:
        with self._lock:
            for job in jobs:
                self._release(job.id)

    def _release(self, job_id: str) -> None:
        # Under self._lock.
        key = self._unique_of.pop(job_id, None)
        if key is not None and self._unique.get(key, ("",))[0] == job_id:
            del self._unique[key]

    def record_enqueued(self, jobs: Sequence[Job]) -> None:
        now: datetime | None = None
        records = self._jobs
        for job in jobs:
            status: JobStatus = "queued"
            if job.run_at is not None:
                if now is None:
                    now = datetime.now(timezone.utc)
                if job.run_at > now:
                    status = "scheduled"
            if job.id not in records:  # a new job: the common case
                records[job.id] = _Record(job, status)
                continue
            with self._lock, self._stripe(job.id):  # the same id again (a retry, jobs.retry)
                self._completed.pop(job.id, None)
                previous = records.get(job.id)
                if previous is not None and job.attempt > 1:
                    previous.source = job
                    previous.status = "retrying"
                    previous.run_at = job.run_at
                    continue
                records[job.id] = _Record(job, status)

    def record_started(self, job: Job) -> StartCheck:
        job_id = job.id
        record = self._jobs.get(job_id)
        if record is None:
            # Every job is recorded at enqueue, and only completed ones expire: a job unknown
            # here was cancelled and then discarded while it waited. It must not run.
            return _CANCELLED
        with self._stripes[hash(job_id) & _STRIPE_MASK]:
            if record.status == "cancelled":
                return _CANCELLED
            record.status = "processing"
            record.attempts = job.attempt
            record.started = record.changed = time.time()
        return _STARTED

    def record_outcome(self, job: Job, outcome: Outcome) -> None:
        job_id = job.id
        record = self._jobs.get(job_id)
        if record is None:
            return
        # Serialized here, once, outside the lock: a job that returned None costs one test.
        result = result_json(outcome.value, job_id) if outcome.value is not None and outcome.ok else None
        stripe = hash(job_id) & _STRIPE_MASK
        with self._stripes[stripe]:
            status = record.status = _SETTLED[outcome.kind]
            now = record.changed = time.time()
            if outcome.attempt > record.attempts:
                record.attempts = outcome.attempt
            if outcome.error_text is not None:
                record.last_error, record.traceback = outcome.error_text, outcome.traceback
                record.error_class = outcome.error_class
            if result is not None:
                record.result = result
            if status == "retrying":
                record.run_at = outcome.retry_at
                return
            record.finished = now
            if status != "cancelled":
                self._count_ended(self._ended[stripe], int(now // 60), status == "failed")
        if self._unique_of:  # the job ended: its key is free
            with self._lock:
                self._release(job_id)
        if status == "completed":
            completed = self._completed
            completed[job_id] = time.monotonic()
            # Reads expire first, so what they see is exact; writes only keep the memory
            # bounded, trimming in batches.
            if len(completed) > self._size + _TRIM_BATCH:
                with self._lock:
                    self._expire(time.monotonic())

    @staticmethod
    def _count_ended(counts: dict[int, list[int]], minute: int, failed: bool) -> None:
        # Under the stripe's lock.
        counted = counts.get(minute)
        if counted is None:
            counted = counts[minute] = [0, 0]
            for old in [m for m in counts if m <= minute - THROUGHPUT_MINUTES]:
                del counts[old]
        counted[1 if failed else 0] += 1

    # -- what the dashboard reads ----------------------------------------------------------

    def _snapshot(self) -> list[_Record]:
        """Every record, after forgetting the expired ones (so reads agree with ``get``)."""
        with self._lock:
            self._expire(time.monotonic())
        return list(self._jobs.values())  # list() of a dict is atomic

    def jobs(self, query: JobQuery) -> JobPage:
        now = datetime.now(timezone.utc)
        candidates = [
            r
            for r in self._snapshot()
            if (query.status is None or r.status_at(now) == query.status)
            and (query.queue is None or r.job.queue == query.queue)
        ]
        candidates.sort(key=lambda r: r.changed, reverse=True)
        need = query.offset + query.limit + 1
        searched: int | None = None
        if query.worker is not None or query.text:
            if len(candidates) > SEARCH_LIMIT:
                candidates, searched = candidates[:SEARCH_LIMIT], SEARCH_LIMIT
            candidates = [r for r in candidates if _matches(r.job, query.worker, query.text)]
        if len(candidates) >= need:
            searched = None  # the page is whole: the limit did not cut it short
        page = candidates[query.offset : query.offset + query.limit]
        infos = []
        for record in page:
            with self._stripe(record.job.id):
                infos.append(record.info(now))
        return JobPage(jobs=infos, more=len(candidates) > query.offset + query.limit, searched=searched)

    def status_counts(self) -> dict[str, int]:
        now = datetime.now(timezone.utc)
        counts: dict[str, int] = {}
        for record in self._snapshot():
            status = record.status_at(now)
            counts[status] = counts.get(status, 0) + 1
        return counts

    def queue_stats(self) -> list[QueueStats]:
        now = datetime.now(timezone.utc)
        # name -> [queued, scheduled, processing, failed], oldest queued enqueue time
        counts: dict[str, list[int]] = {}
        oldest: dict[str, datetime] = {}
        for record in self._snapshot():
            job = record.job
            row = counts.setdefault(job.queue, [0, 0, 0, 0])
            status = record.status_at(now)
            if status == "queued":
                row[0] += 1
                if job.queue not in oldest or job.enqueued_at < oldest[job.queue]:
                    oldest[job.queue] = job.enqueued_at
            elif status in ("scheduled", "retrying"):
                row[1] += 1
            elif status == "processing":
                row[2] += 1
            elif status == "failed":
                row[3] += 1
        return [
            QueueStats(name, queued, scheduled, processing, failed, oldest.get(name))
            for name, (queued, scheduled, processing, failed) in sorted(counts.items())
        ]

    def throughput(self, minutes: int = 60) -> list[ThroughputBucket]:
        current = int(time.time() // 60)
        first = current - max(1, minutes) + 1
        totals = {minute: [0, 0] for minute in range(first, current + 1)}
        for stripe, counts in zip(self._stripes, self._ended, strict=True):
            with stripe:
                for minute, (completed, failed) in counts.items():
                    if minute in totals:
                        totals[minute][0] += completed
                        totals[minute][1] += failed
        return [
            ThroughputBucket(datetime.fromtimestamp(minute * 60, timezone.utc), completed, failed)
            for minute, (completed, failed) in totals.items()
        ]

    def _expire(self, now: float) -> None:
        """Forget completed jobs past ``keep_completed`` or beyond the newest ``size``.

        Under self._lock."""
        completed = self._completed
        cutoff = now - self._keep
        size = self._size
        records = self._jobs
        while completed:
            if len(completed) <= size:
                finished = next(iter(completed.values()))
                if finished > cutoff:
                    break
            job_id, _ = completed.popitem(last=False)
            record = records.get(job_id)
            # No stripe lock needed: a completed job changes again only if its id is enqueued
            # again, which takes self._lock.
            if record is not None and record.status == "completed":
                del records[job_id]


_stores: weakref.WeakSet[MemoryJobStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_stores):
        store._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _aware(stamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(stamp, timezone.utc) if stamp is not None else None


def _matches(job: Job, worker: str | None, text: str | None) -> bool:
    if worker is not None and job.name != worker:
        return False
    if not text:
        return True
    needle = text.lower()
    return needle in job.kwargs_json.lower() or (job.args_json != "[]" and needle in job.args_json.lower())


def _args_of(job: Job) -> object:
    try:
        kwargs = json.loads(job.kwargs_json)
        args = json.loads(job.args_json)
    except ValueError:
        return job.kwargs_json
    return kwargs if not args else {"args": args, "kwargs": kwargs}
