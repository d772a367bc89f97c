"""The recorder behind ``unified_jobs.testing``: recorded jobs, assertions and their messages."""

from __future__ import annotations

import difflib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from pydantic import BaseModel, ValidationError

from unified_jobs.adapters.base import Adapter
from unified_jobs.adapters.inline import arun_inline, run_inline
from unified_jobs.adapters.memory_store import MemoryJobStore
from unified_jobs.adapters.recording import RecordingAdapter
from unified_jobs.core.job import Job
from unified_jobs.errors import InvalidOptionError, TooManyJobsError, UnifiedJobsError
from unified_jobs.jobs import Jobs
from unified_jobs.worker import Worker

#: How many jobs one ``perform_enqueued_jobs`` call runs at most before it gives up.
DEFAULT_PERFORM_LIMIT = 100


WorkerClass = type[Worker[Any]]
Only = WorkerClass | Iterable[WorkerClass] | None


_active: list[JobRecorder] = []
_active_lock = threading.Lock()


@dataclass(frozen=True)
class RecordedJob:
    """One recorded job: the ``Job`` exactly as a queue would have received it, and its app."""

    #: The job as ``perform_later`` handed it to the adapter (arguments as JSON text).
    job: Job
    #: The app it was enqueued on.
    app: Jobs

    @property
    def id(self) -> str:
        """The job id (the ``JobHandle.id`` that ``perform_later`` returned)."""
        return self.job.id

    @property
    def name(self) -> str:
        """The worker's name."""
        return self.job.name

    @property
    def queue(self) -> str:
        """The queue the job went to."""
        return self.job.queue

    @property
    def priority(self) -> int | None:
        """The priority asked for, or ``None``."""
        return self.job.priority

    @property
    def run_at(self) -> datetime | None:
        """When the job becomes due (``wait=``/``run_at=``), or ``None`` for now."""
        return self.job.run_at

    @property
    def worker(self) -> WorkerClass:
        """The worker class registered under the job's name."""
        return self.app.worker(self.name)

    @property
    def kwargs(self) -> Any:
        """The arguments as decoded JSON (a dict for a ``Worker`` job)."""
        return json.loads(self.job.kwargs_json)

    @property
    def args(self) -> BaseModel:
        """The arguments as the worker will get them: the model, rebuilt from the JSON."""
        return self.worker.args_model.model_validate_json(self.job.kwargs_json)

    def __str__(self) -> str:
        extra = "".join(
            f" {key}={value}"
            for key, value in (("priority", self.priority), ("run_at", self.run_at))
            if value is not None
        )
        return f"{self.name} queue={self.queue}{extra} args={_compact(self.kwargs)}"


class JobRecorder:
    """Records what ``app`` enqueues, while started (``with JobRecorder(app):`` or ``start()``).

    Starting swaps a ``RecordingAdapter`` into the app; stopping puts the previous adapter
    back. Jobs already recorded stay readable after ``stop()``.
    """

    def __init__(self, app: Jobs) -> None:
        #: The app being recorded.
        self.app = app
        #: The adapter that holds the recorded jobs (its store keeps completed ones as long as
        #: the app's other in-memory modes do: ``workers.keep_completed``).
        self.adapter = RecordingAdapter(MemoryJobStore(app.config.workers.keep_completed))
        self._previous: Adapter | None = None

    # -- switching -------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._previous is not None

    def start(self) -> JobRecorder:
        """Put the app in recording mode; returns ``self``."""
        if self.active:
            raise UnifiedJobsError("this JobRecorder is already started")
        self._previous = self.app._replace_adapter(self.adapter)
        with _active_lock:
            _active.append(self)
        return self

    def stop(self) -> None:
        """Give the app back the adapter it had before ``start()``."""
        previous, self._previous = self._previous, None
        if previous is None:
            return
        with _active_lock:
            _active.remove(self)
        self.app._replace_adapter(previous)

    def __enter__(self) -> JobRecorder:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "active" if self.active else "stopped"
        return f"<JobRecorder {state} jobs={len(self.adapter.jobs)} app={self.app!r}>"

    # -- reading ---------------------------------------------------------------------------

    def enqueued_jobs(self, worker: WorkerClass | None = None, queue: str | None = None) -> list[RecordedJob]:
        """The recorded jobs, oldest first; only ``worker``'s and on ``queue`` when given."""
        return [
            RecordedJob(job, self.app)
            for job in self.adapter.jobs
            if (worker is None or job.name == worker.name) and (queue is None or job.queue == queue)
        ]

    def clear_enqueued_jobs(self) -> None:
        """Forget every recorded job."""
        self.adapter.clear()

    # -- asserting -------------------------------------------------------------------------

    def assert_enqueued(
        self,
        worker: WorkerClass,
        args: BaseModel | dict[str, Any] | None = None,
        count: int | None = None,
        queue: str | None = None,
    ) -> list[RecordedJob]:
        """Assert that ``worker`` jobs were enqueued, and return them.

        ``args`` (a model instance or a dict, validated by the worker's model) must equal the
        job's arguments in their JSON form; ``queue`` must be the job's queue; ``count`` is the
        exact number of matching jobs (default: at least one). On failure, the
        ``AssertionError`` shows a diff against the closest recorded arguments and lists
        every recorded job.
        """
        __tracebackhide__ = True
        expected = None if args is None else _expected_kwargs(worker, args)
        matches = [j for j in self.enqueued_jobs(worker, queue) if expected is None or j.kwargs == expected]
        if len(matches) == count or (count is None and matches):
            return matches
        wanted = "a job" if count is None else f"{count} job{'' if count == 1 else 's'}"
        lines = [
            f"expected {wanted} of {_describe_worker(worker)}{_conditions(expected, queue)}, "
            f"found {len(matches)}"
        ]
        if expected is not None and not matches:
            lines += _closest_diff(expected, self.enqueued_jobs(worker))
        lines += _listing(self.enqueued_jobs())
        raise AssertionError("\n".join(lines))

    def assert_not_enqueued(
        self, worker: WorkerClass | None = None, args: BaseModel | dict[str, Any] | None = None
    ) -> None:
        """Assert that no job was enqueued: none at all, none of ``worker``, or none of
        ``worker`` with these ``args``."""
        __tracebackhide__ = True
        if args is not None and worker is None:
            raise InvalidOptionError("assert_not_enqueued(args=...) needs the worker class too")
        expected = None if args is None or worker is None else _expected_kwargs(worker, args)
        matches = [j for j in self.enqueued_jobs(worker) if expected is None or j.kwargs == expected]
        if not matches:
            return
        what = "no job" if worker is None else f"no job of {_describe_worker(worker)}"
        lines = [f"expected {what}{_conditions(expected, None)}, found {len(matches)}"]
        lines += _listing(self.enqueued_jobs())
        raise AssertionError("\n".join(lines))

    # -- performing ------------------------------------------------------------------------

    def perform_enqueued_jobs(
        self, only: Only = None, limit: int = DEFAULT_PERFORM_LIMIT
    ) -> list[RecordedJob]:
        """Run the recorded jobs, oldest first, and the jobs they enqueue, until none are left.

        Each job goes through the app's executor, as on a real worker: its JSON arguments are
        validated into the model, a fresh worker is built with the app's context, and a failed
        attempt is retried at once as the worker's ``Retry`` allows. ``only``
        (a worker class or several) leaves other jobs recorded. A job's exception propagates
        (that job is no longer recorded). A job cancelled while recorded (``jobs.cancel``) is
        no longer recorded, so it never runs. More than ``limit`` jobs raises
        ``TooManyJobsError``. Returns the jobs run. Delays and priorities are not honoured.
        """
        __tracebackhide__ = True
        done = []
        for recorded in self._taken_jobs(only, limit):
            run_inline(self.app.executor, self.adapter.store, recorded.job)
            done.append(recorded)
        return done

    async def aperform_enqueued_jobs(
        self, only: Only = None, limit: int = DEFAULT_PERFORM_LIMIT
    ) -> list[RecordedJob]:
        """``perform_enqueued_jobs`` for async tests: ``async def perform`` runs on the caller's loop."""
        done = []
        for recorded in self._taken_jobs(only, limit):
            await arun_inline(self.app.executor, self.adapter.store, recorded.job)
            done.append(recorded)
        return done

    def _taken_jobs(self, only: Only, limit: int) -> Iterator[RecordedJob]:
        __tracebackhide__ = True
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidOptionError(f"limit= takes a positive int, got {limit!r}")
        wanted = _selector(only)
        for _ in range(limit):
            job = self.adapter.take(wanted)
            if job is None:
                return
            yield RecordedJob(job, self.app)
        left = [RecordedJob(j, self.app) for j in self.adapter.jobs if wanted(j)]
        if left:
            lines = [
                f"perform_enqueued_jobs stopped at its limit of {limit} jobs with {len(left)} still "
                "enqueued; a job probably enqueues itself (or another) without end. If that many "
                "jobs are expected, pass a higher limit=."
            ]
            raise TooManyJobsError("\n".join(lines + _listing(left)))


# -- switching an app's mode ---------------------------------------------------------------


def _as_tuple(only: Only) -> tuple[WorkerClass, ...]:
    if only is None:
        return ()
    return (only,) if isinstance(only, type) else tuple(only)


def _selector(only: Only) -> Callable[[Job], bool]:
    if only is None:
        return lambda job: True
    names = {worker.name for worker in _as_tuple(only)}
    return lambda job: job.name in names


def _expected_kwargs(worker: WorkerClass, args: BaseModel | dict[str, Any]) -> Any:
    """``args`` in the JSON form ``perform_later`` would enqueue, decoded."""
    model = worker.args_model
    try:
        validated = args if type(args) is model else model.model_validate(args)
    except ValidationError as exc:
        raise InvalidOptionError(
            f"args= does not validate as {model.__name__} (the arguments of {worker.__qualname__}), "
            f"so no job could have them:\n{exc}"
        ) from None
    return json.loads(validated.model_dump_json())


def _describe_worker(worker: WorkerClass) -> str:
    if worker.name == f"{worker.__module__}.{worker.__qualname__}":
        return worker.__qualname__
    return f"{worker.__qualname__} (name {worker.name!r})"


def _conditions(expected: Any, queue: str | None) -> str:
    parts = [] if expected is None else [f" with args {_compact(expected)}"]
    if queue is not None:
        parts.append(f" on queue {queue!r}")
    return "".join(parts)


def _closest_diff(expected: Any, candidates: list[RecordedJob]) -> list[str]:
    if not candidates:
        return []
    want = _pretty(expected)
    best = max(candidates, key=lambda j: difflib.SequenceMatcher(None, want, _pretty(j.kwargs)).ratio())
    got = _pretty(best.kwargs)
    if got == want:
        return [f"a job with exactly these args is on queue {best.queue!r}"]
    diff = difflib.unified_diff(
        want.splitlines(), got.splitlines(), "expected args", f"enqueued args (job {best.id})", lineterm=""
    )
    return ["closest enqueued args (- expected, + enqueued):", *("    " + line for line in diff)]


def _listing(jobs: list[RecordedJob], shown: int = 50) -> list[str]:
    if not jobs:
        return ["no jobs were enqueued"]
    lines = [f"enqueued jobs ({len(jobs)}):", *(f"    {n}. {job}" for n, job in enumerate(jobs[:shown], 1))]
    if len(jobs) > shown:
        lines.append(f"    ... and {len(jobs) - shown} more")
    return lines


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
