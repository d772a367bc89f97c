"""What each dashboard page shows, gathered from the app's job store and config, and the actions
it offers. Plain functions of a ``Jobs`` app (no web framework here), called in a thread.

A store that is down, or a kind that cannot answer one question, becomes a ``Problem`` shown on
the page, never a server error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

from unified_jobs._uri import mask_uri
from unified_jobs.core.heartbeat import Liveness, judge
from unified_jobs.core.job import FINISHED, STATUSES, JobInfo, JobStatus
from unified_jobs.core.monitor import JobPage, JobQuery, QueueStats, ThroughputBucket, WorkerBeat
from unified_jobs.jobs import Jobs
from unified_jobs.scheduler import Schedule, TickRecord

__all__ = [
    "PAGE_SIZE",
    "Problem",
    "actions_for",
    "masked_args",
    "purge_queue",
    "run_schedule_now",
    "where",
]

T = TypeVar("T")

#: Jobs per page of a listing.
PAGE_SIZE = 50
#: Argument names whose values are shown as ``***`` (case-insensitive, anywhere in the name).
SECRET_NAMES = re.compile(r"pass(word|wd)?|secret|token|api[_-]?key|auth|credential|private", re.I)
MASK = "***"


@dataclass(frozen=True)
class Problem:
    """A question the store could not answer: what was asked, and why."""

    what: str
    why: str
    #: The store failed (down, refused), as opposed to a kind that cannot answer this.
    down: bool = True


def attempt(what: str, problems: list[Problem], fn: Callable[[], T], default: T) -> T:
    """``fn()``, or ``default`` with a ``Problem`` noted: a store that is down, or a kind that
    cannot answer (``NotImplementedError``), does not break the page."""
    try:
        return fn()
    except NotImplementedError as exc:
        problems.append(Problem(what, str(exc) or "not supported by this queue kind", down=False))
    except Exception as exc:  # any store failure is shown, with its type
        problems.append(Problem(what, f"{type(exc).__name__}: {mask_secrets(str(exc))}"))
    return default


def where(jobs: Jobs) -> str:
    """The mode and, in BackgroundQueue, the queue's kind and masked URI."""
    queue = jobs.config.queue
    if jobs.mode != "BackgroundQueue" or queue is None:
        return f"{jobs.mode} (in this process)"
    return f"{queue.kind} queue at {mask_uri(queue.uri)}"


_URI_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?=@)", re.I)


def mask_secrets(text: str) -> str:
    """Passwords in URIs inside free text (an error message) as ``***``."""
    return _URI_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}", text)


def masked_args(value: Any) -> Any:
    """A job's arguments with the values of secret-looking keys replaced by ``***``."""
    if isinstance(value, dict):
        return {
            k: (MASK if isinstance(k, str) and SECRET_NAMES.search(k) else masked_args(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [masked_args(v) for v in value]
    return value


def args_text(info: JobInfo, width: int | None = None) -> str:
    """The masked arguments as JSON text; cut to ``width`` characters with an ellipsis."""
    text = json.dumps(masked_args(info.args), indent=None if width else 2, sort_keys=not width)
    if width and len(text) > width:
        return text[: width - 1] + "…"
    return text


# -- pages ----------------------------------------------------------------------------------


@dataclass
class Overview:
    """The queues page."""

    queues: list[QueueStats]
    counts: dict[str, int]
    throughput: list[ThroughputBucket]
    problems: list[Problem] = field(default_factory=list)


def overview(jobs: Jobs) -> Overview:
    store = jobs.adapter.store
    problems: list[Problem] = []
    stats: list[QueueStats] = attempt("queue statistics", problems, store.queue_stats, [])
    known = {s.name for s in stats}
    # The queues the app's workers use, even with no job yet, so that a new app shows them.
    for name in sorted({w.queue for w in jobs.workers.values()} - known):
        stats.append(QueueStats(name=name))
    stats.sort(key=lambda s: s.name)
    counts: dict[str, int] = attempt("jobs by status", problems, store.status_counts, {})
    throughput: list[ThroughputBucket] = attempt("throughput", problems, lambda: store.throughput(60), [])
    return Overview(stats, counts, throughput, problems)


@dataclass
class Listing:
    """A page of jobs, and the query that found them."""

    query: JobQuery
    page: JobPage
    workers: list[str]
    queues: list[str]
    problems: list[Problem] = field(default_factory=list)


def parse_query(params: dict[str, str], page: int) -> JobQuery:
    """The listing's query string as a ``JobQuery`` (unknown or empty values ignored)."""
    given = params.get("status") or ""
    status: JobStatus | None = next((s for s in STATUSES if s == given), None)
    return JobQuery(
        status=status,
        worker=params.get("worker") or None,
        queue=params.get("queue") or None,
        text=(params.get("q") or "").strip() or None,
        limit=PAGE_SIZE,
        offset=max(0, page - 1) * PAGE_SIZE,
    )


def listing(jobs: Jobs, query: JobQuery) -> Listing:
    store = jobs.adapter.store
    problems: list[Problem] = []
    page = attempt("the jobs", problems, lambda: store.jobs(query), JobPage([], False))
    # The filter offers the registered workers' queues (and the one asked for): counting the
    # store's queues would double what a page costs on the SQL kinds.
    queues = sorted({w.queue for w in jobs.workers.values()} | ({query.queue} if query.queue else set()))
    return Listing(query, page, sorted(jobs.workers), queues, problems)


def job(jobs: Jobs, job_id: str) -> tuple[JobInfo | None, list[Problem]]:
    problems: list[Problem] = []
    info = attempt("the job", problems, lambda: jobs.job(job_id), None)
    return info, problems


#: Action name -> (button label, what the confirmation asks).
ACTIONS: dict[str, tuple[str, str]] = {
    "retry": ("Retry", "Enqueue this failed job again, its attempts counted from 1?"),
    "discard": ("Discard", "Forget this job for good? Its record and error are deleted."),
    "cancel": ("Cancel", "Cancel this job? A waiting job never runs; a running one is asked to stop."),
    "run-now": ("Run now", "Make this job due now instead of at its scheduled time?"),
}


def actions_for(info: JobInfo, can_run_now: bool = True) -> list[str]:
    """The actions that make sense for a job in its status (``run-now`` only where the
    adapter can move a waiting job: ``Adapter.can_run_now``)."""
    status: JobStatus = info.status
    if status == "failed":
        return ["retry", "discard"]
    if status == "cancelled":
        return ["discard"]
    if status in ("scheduled", "retrying"):
        return ["run-now", "cancel"] if can_run_now else ["cancel"]
    if status in FINISHED:
        return []
    return ["cancel"]  # queued, processing


def act(jobs: Jobs, action: str, job_id: str) -> tuple[bool, str]:
    """Do ``action`` on a job: (done, what to tell the user)."""
    if action == "retry":
        done = jobs.retry(job_id)
        return done, "enqueued again" if done else "is not a failed job (nothing done)"
    if action == "discard":
        done = jobs.discard(job_id)
        return done, "discarded" if done else "is not a failed or cancelled job (nothing done)"
    if action == "cancel":
        done = jobs.cancel(job_id)
        return done, "cancelled" if done else "is neither waiting nor running (nothing done)"
    if action == "run-now":
        done = jobs.adapter.run_now(job_id)
        return done, "is due now" if done else "is not waiting for a later time (nothing done)"
    raise ValueError(f"unknown action {action!r}; the actions are {', '.join(ACTIONS)}")


def purge_queue(jobs: Jobs, name: str) -> int:
    """Delete every job waiting in queue ``name`` (due or scheduled, not yet started): the
    broker's messages where there is a broker, and the job store's records (cancelled, so
    that a message still on its way is not run). Returns how many jobs were purged."""
    purged = 0
    if jobs.mode == "BackgroundQueue":
        kind = jobs.celery_bridge().kind
        if kind is not None and kind.job_table() is None:  # Redis, RabbitMQ: the broker's lists
            purged = sum(kind.purge_queues(jobs.celery, [name]).values())
    adapter = jobs.adapter
    cancelled = 0
    for status in ("queued", "scheduled", "retrying"):
        while True:  # cancel page by page until none is left (each cancel takes one out)
            page = adapter.store.jobs(JobQuery(status=status, queue=name, limit=500))
            # The adapter's cancel: the in-process pool also drops a delayed job it holds.
            done = sum(1 for info in page.jobs if adapter.cancel(info.id))
            cancelled += done
            if not page.more or done == 0:
                break
    return max(purged, cancelled)


def run_schedule_now(jobs: Jobs, name: str) -> str:
    """Enqueue one job of recurring schedule ``name`` now (outside its ticks); its job id."""
    schedule = jobs.schedules.get(name)
    if schedule is None:
        raise KeyError(name)
    handle = jobs.perform_later(jobs.worker(schedule.worker), dict(schedule.args), queue=schedule.queue)
    return handle.id


@dataclass
class Scheduled:
    """The scheduled page: delayed jobs and recurring schedules."""

    delayed: JobPage
    retrying: JobPage
    schedules: list[dict[str, Any]]
    problems: list[Problem] = field(default_factory=list)


def scheduled(jobs: Jobs) -> Scheduled:
    store = jobs.adapter.store
    problems: list[Problem] = []
    empty = JobPage([], False)
    delayed = attempt(
        "scheduled jobs", problems, lambda: store.jobs(JobQuery(status="scheduled", limit=PAGE_SIZE)), empty
    )
    retrying = attempt(
        "retrying jobs", problems, lambda: store.jobs(JobQuery(status="retrying", limit=PAGE_SIZE)), empty
    )
    rows: list[dict[str, Any]] = []
    found: dict[str, Schedule] = attempt("schedules", problems, lambda: dict(jobs.schedules), {})
    if found:
        records: dict[str, TickRecord] = attempt(
            "the schedules' last runs", problems, lambda: jobs.adapter.schedule_state().get(list(found)), {}
        )
        now = datetime.now(timezone.utc)
        for name, schedule in sorted(found.items()):
            record = records.get(name)
            last = record.last_tick if record is not None else None
            rows.append(
                {
                    "name": name,
                    "worker": schedule.worker,
                    "expression": schedule.expression,
                    "queue": schedule.queue or jobs.worker(schedule.worker).queue,
                    # A new schedule's record holds its starting point, which no scheduler ran.
                    "last_tick": last if record is not None and record.last_by is not None else None,
                    "last_job_id": record.last_job_id if record is not None else None,
                    "next_run": schedule.next_run(last, now),
                }
            )
    return Scheduled(delayed, retrying, rows, problems)


def workers(jobs: Jobs) -> tuple[list[tuple[WorkerBeat, Liveness]], list[Problem]]:
    """Each worker's beat and the verdict on it (``core.heartbeat.judge``, as ``doctor
    --workers`` gives it, with the app's ``workers.stale_after``)."""
    problems: list[Problem] = []
    beats: list[WorkerBeat] = attempt("worker heartbeats", problems, jobs.adapter.store.workers, [])
    stale_after = jobs.config.workers.stale_after
    return [(beat, judge(beat, stale_after)) for beat in sorted(beats, key=lambda b: b.id)], problems
