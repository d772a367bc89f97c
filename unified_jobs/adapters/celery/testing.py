"""A real Celery worker inside a test process, bound to a ``Jobs`` app (see ``testing.run_worker``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery import signals
from celery.contrib.testing.worker import start_worker

from unified_jobs.errors import UnifiedJobsError
from unified_jobs.job import JobHandle

if TYPE_CHECKING:
    from unified_jobs.jobs import Jobs

__all__ = ["JobFailedInWorker", "RunningWorker", "run_worker", "watch_jobs", "worker_parameters"]


class JobFailedInWorker(UnifiedJobsError, AssertionError):
    """``RunningWorker.wait`` saw the job fail (or be rejected) in the worker."""


class RunningWorker:
    """A worker consuming the app's real queue in a thread of this process.

    ``wait(handle)`` blocks until the worker has finished that job and raises
    ``JobFailedInWorker`` (with the job's exception as its cause) if it failed.
    """

    def __init__(self, jobs: Jobs, queues: list[str]) -> None:
        self.jobs = jobs
        #: The queues the worker consumes.
        self.queues = queues
        self._cond = threading.Condition()
        self._states: dict[str, tuple[str, BaseException | None]] = {}

    def _on_postrun(
        self, sender: Any = None, task_id: str | None = None, state: str | None = None, **_: Any
    ) -> None:
        if task_id is None or getattr(sender, "app", None) is not self.jobs.celery:
            return
        with self._cond:
            previous = self._states.get(task_id, ("", None))[1]
            self._states[task_id] = (state or "UNKNOWN", previous)
            self._cond.notify_all()

    def _on_failure(
        self, sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, **_: Any
    ) -> None:
        if task_id is None or getattr(sender, "app", None) is not self.jobs.celery:
            return
        with self._cond:
            self._states[task_id] = ("FAILURE", exception)
            self._cond.notify_all()

    def finished(self) -> dict[str, str]:
        """Job id -> Celery state (SUCCESS, FAILURE, REJECTED, ...) of every job run so far."""
        with self._cond:
            return {job_id: state for job_id, (state, _) in self._states.items()}

    def wait(self, handle: JobHandle | str, timeout: float = 10.0) -> None:
        """Wait until the worker finished the job; raise ``JobFailedInWorker`` if it did not succeed."""
        job_id = handle.id if isinstance(handle, JobHandle) else handle
        deadline = time.monotonic() + timeout
        with self._cond:
            while job_id not in self._states:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"job {job_id} did not finish within {timeout}s; is its queue consumed by this "
                        f"worker ({', '.join(self.queues)})?"
                    )
                self._cond.wait(remaining)
            state, error = self._states[job_id]
        if state != "SUCCESS":
            raise JobFailedInWorker(f"job {job_id} ended {state} in the worker: {error!r}") from error

    def wait_all(self, handles: Iterable[JobHandle | str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for handle in handles:
            self.wait(handle, timeout=max(0.0, deadline - time.monotonic()))


@contextmanager
def watch_jobs(jobs: Jobs, queues: list[str] | None = None) -> Iterator[RunningWorker]:
    """Follow what any Celery worker of this process runs for ``jobs`` inside the block.

    For a worker this module did not start, e.g. ``celery.contrib.pytest``'s ``celery_worker``
    on ``jobs.celery``: ``watcher.wait(handle)`` waits for a job (or a plain task's id).
    """
    running = RunningWorker(jobs, queues or jobs.celery_bridge().worker_queues())
    signals.task_postrun.connect(running._on_postrun, weak=False)
    signals.task_failure.connect(running._on_failure, weak=False)
    try:
        yield running
    finally:
        signals.task_postrun.disconnect(running._on_postrun)
        signals.task_failure.disconnect(running._on_failure)


def worker_parameters(jobs: Jobs) -> dict[str, Any]:
    """Keyword arguments of Celery's ``start_worker`` for a worker that runs ``jobs``' queues."""
    # No ping check: it needs a result backend, which an app's queue kind may not configure.
    return {"queues": jobs.celery_bridge().worker_queues(), "perform_ping_check": False}


@contextmanager
def run_worker(
    jobs: Jobs,
    *,
    pool: str = "solo",
    concurrency: int = 1,
    queues: list[str] | None = None,
    shutdown_timeout: float = 10.0,
) -> Iterator[RunningWorker]:
    """Run a real Celery worker for ``jobs`` (which must be in BackgroundQueue mode) in this process."""
    if jobs.mode != "BackgroundQueue":
        raise UnifiedJobsError(
            f"run_worker needs an app in BackgroundQueue mode (a real queue); this one is {jobs.mode}. "
            "Use a config with workers.mode: BackgroundQueue, or test inline with the inline_jobs fixture"
        )
    with (
        watch_jobs(jobs, queues) as running,
        start_worker(
            jobs.celery,
            pool=pool,
            concurrency=concurrency,
            perform_ping_check=False,
            queues=running.queues,
            shutdown_timeout=shutdown_timeout,
            loglevel="WARNING",
        ),
    ):
        yield running
