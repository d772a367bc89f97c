"""The job store port: where a job's status, attempts, last error and result are kept.

Each adapter has one: in memory for the in-process modes, a small Redis store beside the Redis
queue, and the jobs table itself on the SQL kinds (whose transport writes the lifecycle, so its
``record_*`` hooks do nothing). ``Jobs.job()``, ``failed()``, ``retry()``, ``discard()`` and
``cancel()`` and the ``jobs`` command line read it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from unified_jobs.core.job import Job, JobInfo
from unified_jobs.core.monitor import JobPage, JobQuery, QueueStats, ThroughputBucket, WorkerBeat
from unified_jobs.core.outcome import Outcome

__all__ = ["JobStore", "StartCheck"]


@dataclass(frozen=True, slots=True)
class StartCheck:
    """What the store said when a delivery of a job started."""

    #: How many times this attempt has been delivered, this one included (0: unknown).
    deliveries: int = 0
    #: The job was cancelled while it waited: do not run it.
    cancelled: bool = False
    #: This attempt already ended (completed, failed, or failed and its retry enqueued): the
    #: delivery repeats a message whose ack was lost (the broker restarted or the connection
    #: dropped after the job ran). Do not run it again.
    settled: bool = False


class JobStore(ABC):
    """A job store. Reads are for users; the ``record_*`` hooks are for adapters."""

    @abstractmethod
    def get(self, job_id: str) -> JobInfo | None:
        """The job, or ``None`` if the store does not know it (never enqueued, or expired)."""

    @abstractmethod
    def failed(self, worker: str | None = None, limit: int = 100) -> list[JobInfo]:
        """Failed jobs, newest first, of one worker (by name) or of all."""

    @abstractmethod
    def discard(self, job_id: str) -> bool:
        """Forget a failed (or cancelled) job; False if there was no such finished job."""

    @abstractmethod
    def cancel(self, job_id: str) -> bool:
        """Mark a job that has not started (queued, scheduled, retrying) cancelled; False if
        it was not waiting."""

    #: Whether ``run_now`` can make a waiting job due now (False where the waiting message is
    #: out of the store's reach, such as in RabbitMQ's delay queues).
    can_run_now: bool = False

    def run_now(self, job_id: str) -> bool:
        """Make a job that waits for its ``run_at`` (delayed, or a retry's backoff) due now,
        the same job (id, attempt): a scheduled job is queued then, a retry stays retrying;
        False if it was not waiting so, or the store cannot move it (``can_run_now``)."""
        return False

    def request_cancel(self, job_id: str) -> bool:
        """Ask a job running in some worker process to stop; False where not supported."""
        return False

    def cancel_requested(self, job_ids: Iterable[str]) -> set[str]:
        """Which of these running jobs someone asked to stop."""
        return set()

    # -- what the dashboard, the metrics and ``doctor --workers`` read ----------------------

    def jobs(self, query: JobQuery) -> JobPage:
        """One page of the jobs that match ``query``, newest first."""
        raise NotImplementedError(f"{type(self).__name__} cannot list jobs")

    def status_counts(self) -> dict[str, int]:
        """How many jobs the store keeps in each status (statuses with none may be missing)."""
        raise NotImplementedError(f"{type(self).__name__} cannot count jobs")

    def queue_stats(self) -> list[QueueStats]:
        """Every queue the store knows a job of, by name (the SQL kinds: every queue with a job
        waiting, running or failed, or that a live worker consumes; finding the others would
        cost a scan of the whole history)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no queue statistics")

    def throughput(self, minutes: int = 60) -> list[ThroughputBucket]:
        """Jobs that ended in each of the last ``minutes`` minutes, oldest first, one bucket
        per minute (the current minute last), empty minutes included. Redis and memory keep
        65 minutes of counts (older minutes read 0); the SQL kinds count the rows, so
        completed jobs only with ``on_ack: complete`` (the default)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no throughput")

    def record_heartbeat(self, beat: WorkerBeat) -> None:
        """A worker process is alive: keep its beat (replacing its previous one) for a few
        ``beat.interval`` s."""
        raise NotImplementedError(f"{type(self).__name__} keeps no heartbeats")

    def forget_worker(self, worker_id: str) -> None:  # noqa: B027 - optional hook
        """The worker stopped cleanly: drop its beat."""

    def workers(self) -> list[WorkerBeat]:
        """The beats of the workers seen lately (dead ones included until their beat expires),
        by id."""
        raise NotImplementedError(f"{type(self).__name__} keeps no heartbeats")

    # -- unique jobs -------------------------------------------------------------------------

    def claim_unique(self, jobs: Sequence[Job]) -> dict[str, str]:
        """Atomically take each job's ``unique_key`` (jobs without one are skipped), unless a
        job that is waiting or running holds it; returns ``{job id: holder's id}`` for the
        jobs refused. A key held past its ``unique_for`` is taken over."""
        raise NotImplementedError(f"{type(self).__name__} has no unique keys")

    def release_unique(self, jobs: Sequence[Job]) -> None:  # noqa: B027 - optional hook
        """Release the keys these jobs hold (enqueueing them failed). Stores release a job's
        key themselves when it ends (``record_outcome``, ``cancel``, ``discard``)."""

    # -- lifecycle, written by adapters ------------------------------------------------------

    def record_enqueued(self, jobs: Sequence[Job]) -> None:  # noqa: B027 - optional hook
        """The jobs were handed to the queue (or pool)."""

    def forget_enqueued(self, jobs: Sequence[Job]) -> None:  # noqa: B027 - optional hook
        """Publishing the jobs failed: drop what ``record_enqueued`` wrote."""

    def record_started(self, job: Job) -> StartCheck:
        """A delivery of ``job`` is about to run."""
        return StartCheck()

    def record_outcome(self, job: Job, outcome: Outcome) -> None:  # noqa: B027 - optional hook
        """The attempt ended so. A store keeps ``outcome.error_text``, ``traceback`` and
        ``error_class`` of a failed attempt, and ``core.outcome.result_json`` of a succeeded
        one's ``value`` (``JobInfo.result``)."""

    def record_unrunnable(self, job: Job, body: str, outcome: Outcome) -> None:
        """A message no worker can run (unknown task, not a task, a body that does not decode)
        is a failed job: ``body`` (its raw text) stands for its arguments."""
        self.record_outcome(job, outcome)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
