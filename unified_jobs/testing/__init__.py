"""Helpers for testing code that enqueues jobs.

Put an app in recording mode, and ``perform_later`` validates and serializes the job
exactly as it would for a real queue, then only records it::

    from unified_jobs.testing import assert_enqueued, perform_enqueued_jobs, recording

    with recording(jobs):
        signup(email="ada@example.com")
        assert_enqueued(WelcomeEmail, args={"user_id": 1})
        perform_enqueued_jobs()        # run them (and the jobs they enqueue), as a worker would

With pytest, the ``jobs_recorder`` fixture does the ``with`` for you (see
``unified_jobs.pytest_plugin`` and docs/guides/testing.md). The module-level helpers act
on the recorder of the worker's app, or with no worker given, on the one started last.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from unified_jobs.config import Config, WorkersConfig
from unified_jobs.errors import InvalidOptionError, NoRecorderError, TooManyJobsError
from unified_jobs.jobs import Jobs
from unified_jobs.testing._recorder import (
    DEFAULT_PERFORM_LIMIT,
    JobRecorder,
    Only,
    RecordedJob,
    WorkerClass,
    _active,
    _active_lock,
    _as_tuple,
)
from unified_jobs.worker import Worker

if TYPE_CHECKING:
    from unified_jobs.adapters.celery.testing import RunningWorker

__all__ = [
    "DEFAULT_PERFORM_LIMIT",
    "JobRecorder",
    "NoRecorderError",
    "OverrideMode",
    "RecordedJob",
    "TooManyJobsError",
    "aperform_enqueued_jobs",
    "assert_enqueued",
    "assert_not_enqueued",
    "celery_worker_parameters_for",
    "clear_enqueued_jobs",
    "current_recorder",
    "enqueued_jobs",
    "override_mode",
    "perform_enqueued_jobs",
    "recording",
    "run_worker",
    "watch_jobs",
]

#: The modes ``override_mode`` can switch an app into.
OverrideMode = Literal["ForegroundBlocking", "BackgroundAsync", "Recording"]


@contextmanager
def recording(app: Jobs) -> Iterator[JobRecorder]:
    """Record what ``app`` enqueues inside the ``with`` block; yields the ``JobRecorder``."""
    with JobRecorder(app) as recorder:
        yield recorder


@contextmanager
def override_mode(app: Jobs, mode: OverrideMode) -> Iterator[Jobs]:
    """Run ``app`` in another mode inside the ``with`` block, then restore its adapter.

    ``"ForegroundBlocking"`` runs jobs inline, ``"BackgroundAsync"`` in a fresh in-process
    pool (drained on exit), ``"Recording"`` records them (the recorder is then
    ``current_recorder()``, so the module-level helpers work).
    """
    if mode == "Recording":
        with recording(app):
            yield app
        return
    if mode not in ("ForegroundBlocking", "BackgroundAsync"):
        raise InvalidOptionError(
            f"override_mode() takes 'ForegroundBlocking', 'BackgroundAsync' or 'Recording', got {mode!r}"
        )
    adapter = app._adapter_for(mode)
    previous = app._replace_adapter(adapter)
    try:
        yield app
    finally:
        try:
            adapter.close(wait=True)
        finally:
            app._replace_adapter(previous)


# -- module-level helpers: they act on the current recorder ---------------------------------


def current_recorder(worker: WorkerClass | None = None) -> JobRecorder:
    """The started recorder of ``worker``'s app, or with no worker, the one started last.

    Raises ``NoRecorderError`` (saying how to start one) when there is none.
    """
    __tracebackhide__ = True
    with _active_lock:
        recorders = list(reversed(_active))
    if not recorders:
        raise NoRecorderError(
            "no app is in recording mode: use the jobs_recorder fixture (pytest), "
            "or `with unified_jobs.testing.recording(jobs):`"
        )
    if worker is None:
        return recorders[0]
    app = worker._unified_jobs_app
    for recorder in recorders:
        if recorder.app is app:
            return recorder
    for recorder in recorders:
        if recorder.app.workers.get(worker.name) is worker:
            return recorder
    where = "is not registered with any app" if app is None else f"is registered with {app!r}"
    raise NoRecorderError(
        f"{worker.__qualname__} {where}, which is not in recording mode (recording: "
        f"{', '.join(repr(r.app) for r in recorders)}). Record the app the code under test uses: "
        "point the pytest plugin at it (ini option unified_jobs_app = 'pkg.module:jobs', or "
        "override the unified_jobs_app fixture), or use `with recording(that_app):`"
    )


def enqueued_jobs(worker: WorkerClass | None = None, queue: str | None = None) -> list[RecordedJob]:
    """The recorded jobs (of ``worker``, on ``queue``); see ``JobRecorder.enqueued_jobs``."""
    return current_recorder(worker).enqueued_jobs(worker, queue)


def assert_enqueued(
    worker: WorkerClass,
    args: BaseModel | dict[str, Any] | None = None,
    count: int | None = None,
    queue: str | None = None,
) -> list[RecordedJob]:
    """Assert ``worker`` jobs were enqueued; see ``JobRecorder.assert_enqueued``."""
    __tracebackhide__ = True
    return current_recorder(worker).assert_enqueued(worker, args, count, queue)


def assert_not_enqueued(
    worker: WorkerClass | None = None, args: BaseModel | dict[str, Any] | None = None
) -> None:
    """Assert no (matching) job was enqueued; see ``JobRecorder.assert_not_enqueued``."""
    __tracebackhide__ = True
    current_recorder(worker).assert_not_enqueued(worker, args)


def perform_enqueued_jobs(only: Only = None, limit: int = DEFAULT_PERFORM_LIMIT) -> list[RecordedJob]:
    """Run the recorded jobs; see ``JobRecorder.perform_enqueued_jobs``."""
    __tracebackhide__ = True
    workers = None if only is None else _as_tuple(only)
    return _recorder_for(workers).perform_enqueued_jobs(workers, limit)


async def aperform_enqueued_jobs(only: Only = None, limit: int = DEFAULT_PERFORM_LIMIT) -> list[RecordedJob]:
    """Async form of ``perform_enqueued_jobs``."""
    workers = None if only is None else _as_tuple(only)
    return await _recorder_for(workers).aperform_enqueued_jobs(workers, limit)


def clear_enqueued_jobs() -> None:
    """Forget the jobs recorded by the current recorder."""
    current_recorder().clear_enqueued_jobs()


def _recorder_for(only: Only) -> JobRecorder:
    workers = _as_tuple(only)
    return current_recorder(workers[0] if workers else None)


# -- internals -----------------------------------------------------------------------------


def _new_app(context: Any = None) -> Jobs:
    """A fresh app in ForegroundBlocking mode, for the pytest fixtures."""
    return Jobs(Config(workers=WorkersConfig(mode="ForegroundBlocking")), context=context)


def _worker_classes() -> list[WorkerClass]:
    found: list[WorkerClass] = []
    pending: list[WorkerClass] = list(Worker.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


@contextmanager
def _preserved_worker_bindings(throwaway: Iterable[Jobs] = ()) -> Iterator[None]:
    """Undo, on exit, the changes of which app each ``Worker`` class enqueues on.

    ``register`` binds a class to the app; a test that registers the user's workers with
    a fresh app must not leave them bound to it. A class bound to no app before is put
    back only if it is now bound to one of ``throwaway`` (apps made for the test).
    """
    throwaway_ids = {id(app) for app in throwaway}
    before = {cls: cls.__dict__.get("_unified_jobs_app") for cls in _worker_classes()}
    try:
        yield
    finally:
        for cls, app in before.items():
            now = cls.__dict__.get("_unified_jobs_app")
            if now is not app and (app is not None or id(now) in throwaway_ids):
                cls._unified_jobs_app = app


def run_worker(
    jobs: Jobs,
    *,
    pool: str = "solo",
    concurrency: int = 1,
    queues: list[str] | None = None,
    shutdown_timeout: float = 10.0,
) -> AbstractContextManager[RunningWorker]:
    """Run a real Celery worker for ``jobs`` (in BackgroundQueue mode) in a thread of this process.

    ``with run_worker(jobs) as worker: handle = W.perform_later(...); worker.wait(handle)``: the
    job goes through the real broker and a real Celery worker; ``wait`` raises
    ``JobFailedInWorker`` if the job failed there. The pytest fixture ``jobs_worker`` wraps it.
    """
    from unified_jobs.adapters.celery.testing import run_worker as _run_worker

    return _run_worker(
        jobs, pool=pool, concurrency=concurrency, queues=queues, shutdown_timeout=shutdown_timeout
    )


def watch_jobs(jobs: Jobs, queues: list[str] | None = None) -> AbstractContextManager[RunningWorker]:
    """Follow what a Celery worker of this process that you started runs for ``jobs``.

    For Celery's own pytest fixtures (``celery_worker``, ``celery_session_worker`` of
    ``celery.contrib.pytest``) on ``jobs.celery``: ``with watch_jobs(jobs) as watcher:``, then
    ``watcher.wait(handle)`` waits for a job, or ``watcher.wait(result.id)`` for a plain task,
    and raises ``JobFailedInWorker`` if it failed.
    """
    from unified_jobs.adapters.celery.testing import watch_jobs as _watch_jobs

    return _watch_jobs(jobs, queues)


def celery_worker_parameters_for(jobs: Jobs) -> dict[str, Any]:
    """What Celery's ``celery_worker_parameters`` fixture should return to run ``jobs``.

    The worker then consumes every queue of ``jobs``, and skips Celery's ping check (it needs a
    result backend). Return it from your override of that fixture (see docs/guides/testing.md).
    """
    from unified_jobs.adapters.celery.testing import worker_parameters

    return worker_parameters(jobs)
