"""``Executor``: the one place a job is validated, built and performed.

Every adapter (inline, the in-process pool, the Celery task of a queue worker, the test
recorder) hands a ``Job`` to ``Executor.run`` and settles the ``Outcome`` it gets back its own
way: the retry policy, the time limit and cancellation are decided here once.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from pydantic import ValidationError

from unified_jobs._async import run_coroutine_sync
from unified_jobs.core.job import Job, utcnow
from unified_jobs.core.limits import CancelToken, watchdog
from unified_jobs.core.outcome import Outcome
from unified_jobs.core.retry import NO_RETRY, Retry, RetryRequested, seconds
from unified_jobs.errors import NotRegisteredError, TimeLimitExceeded

if TYPE_CHECKING:
    from unified_jobs.worker import Worker

__all__ = ["CoroutineRunner", "Executor", "TaskRunner"]

#: Runs a coroutine to its end from sync code (each adapter has its own loop policy).
CoroutineRunner = Callable[[Coroutine[Any, Any, Any]], Any]
#: For a job that is not a registered Worker: the call that runs it (an adopted Celery
#: task), or None when nothing by that name exists.
TaskRunner = Callable[[Job], "Callable[[], Any] | None"]


class Executor:
    """Runs jobs of the workers in ``workers`` (a live mapping: later registrations count).

    ``default_retry`` applies to workers without a ``retry`` of their own (the config's
    ``workers.retry``); ``tasks`` runs jobs of other names (an adopted Celery app's tasks).
    """

    def __init__(
        self,
        workers: Mapping[str, type[Worker[Any]]],
        context: Any = None,
        *,
        default_retry: Retry | None = None,
        tasks: TaskRunner | None = None,
    ) -> None:
        self.workers = workers
        self.context = context
        self.default_retry = default_retry
        self.tasks = tasks
        #: Tokens of the jobs running in this process, by job id (for ``cancel``).
        self.running: dict[str, CancelToken] = {}

    # -- what a job is -----------------------------------------------------------------------

    def worker_class(self, name: str) -> type[Worker[Any]] | None:
        return self.workers.get(name)

    def policy(self, name: str) -> Retry:
        """The retry policy of the worker called ``name``."""
        worker_cls = self.workers.get(name)
        own = getattr(worker_cls, "retry", None) if worker_cls is not None else None
        return own or self.default_retry or NO_RETRY

    def time_limit(self, name: str) -> float | None:
        worker_cls = self.workers.get(name)
        return seconds(getattr(worker_cls, "time_limit", None), "time_limit") if worker_cls else None

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        job: Job,
        *,
        token: CancelToken | None = None,
        run_coroutine: CoroutineRunner = run_coroutine_sync,
    ) -> Outcome:
        """Run one attempt of ``job`` (its ``attempt`` field says which) and tell how it went.

        Never raises for the job's own failure; ``SystemExit`` and ``KeyboardInterrupt`` from
        the job become a failed outcome too, so no caller's thread dies of a job.
        """
        token = token or CancelToken()
        try:
            call = self._prepare(job, token)
        except (ValidationError, NotRegisteredError, ValueError, TypeError) as exc:
            return Outcome.from_error("rejected", exc, job.attempt)
        if call is None:
            return Outcome.from_error(
                "rejected", NotRegisteredError(f"no worker or task named {job.name!r} here"), job.attempt
            )
        limit = self.time_limit(job.name)
        self.running[job.id] = token
        try:
            if call.perform_async is not None:
                return self._settle(job, token, limit, lambda: run_coroutine(self._guard(call, limit, token)))
            return self._settle(job, token, limit, call, sync_limit=limit)
        finally:
            self.running.pop(job.id, None)

    async def arun(self, job: Job, *, token: CancelToken | None = None) -> Outcome:
        """``run`` for the caller's event loop: an ``async def perform`` is awaited on it."""
        token = token or CancelToken()
        try:
            call = self._prepare(job, token)
        except (ValidationError, NotRegisteredError, ValueError, TypeError) as exc:
            return Outcome.from_error("rejected", exc, job.attempt)
        if call is None:
            return self.run(job, token=token)
        if call.perform_async is None:
            return self.run(job, token=token)  # a sync perform blocks the loop, as documented
        limit = self.time_limit(job.name)
        self.running[job.id] = token
        try:
            value = await self._guard(call, limit, token)
        except BaseException as exc:  # the job's, decided below
            return self._failure(job, token, exc, limit)
        finally:
            self.running.pop(job.id, None)
        return self._done(job, token, value)

    def cancel(self, job_id: str) -> bool:
        """Ask a job running in this process to stop; False if it is not running here."""
        token = self.running.get(job_id)
        if token is None:
            return False
        token.cancel()
        return True

    # -- internals ---------------------------------------------------------------------------

    def _prepare(self, job: Job, token: CancelToken) -> _Call | None:
        worker_cls = self.workers.get(job.name)
        if worker_cls is None:
            task = self.tasks(job) if self.tasks is not None else None
            return _Call(task) if task is not None else None
        args = worker_cls.args_model.model_validate_json(job.kwargs_json)
        worker = worker_cls(self.context, job.id)
        worker.attempt = job.attempt
        worker._cancel_token = token
        if worker_cls.is_async():
            return _Call(None, lambda: cast("Coroutine[Any, Any, Any]", worker.perform(args)))
        return _Call(lambda: worker.perform(args))

    async def _guard(self, call: _Call, limit: float | None, token: CancelToken) -> Any:
        task = asyncio.current_task()
        if task is not None:
            token.bind_task(task)
        assert call.perform_async is not None
        coro = call.perform_async()
        if limit is None:
            return await coro
        try:
            return await asyncio.wait_for(coro, limit)
        except asyncio.TimeoutError:
            token.expired = True
            raise TimeLimitExceeded(f"the attempt ran past its time_limit of {limit:g}s") from None

    def _settle(
        self,
        job: Job,
        token: CancelToken,
        limit: float | None,
        call: Callable[[], Any],
        sync_limit: float | None = None,
    ) -> Outcome:
        try:
            if sync_limit is None:
                value = call()
            else:
                entry = watchdog.arm(sync_limit, token)
                try:
                    value = call()
                finally:
                    if watchdog.disarm(entry):
                        raise TimeLimitExceeded(
                            f"the attempt ran past its time_limit of {sync_limit:g}s"
                        ) from None
        except BaseException as exc:  # the job's own failure, whatever it is
            return self._failure(job, token, exc, limit)
        return self._done(job, token, value)

    def _done(self, job: Job, token: CancelToken, value: Any) -> Outcome:
        if token.cancelled() and not token.expired:
            return Outcome("cancelled", job.attempt, value=value)
        return Outcome("succeeded", job.attempt, value=value)

    def _failure(self, job: Job, token: CancelToken, error: BaseException, limit: float | None) -> Outcome:
        if token.expired and not isinstance(error, TimeLimitExceeded):
            error = TimeLimitExceeded(f"the attempt ran past its time_limit of {limit:g}s")
        if token.cancelled() and not token.expired:
            return Outcome.from_error("cancelled", error, job.attempt)
        if isinstance(error, RetryRequested):  # the job asked for it (an adopted Celery task)
            cause = error.cause or error
            delay = max(0.0, (error.at - utcnow()).total_seconds())
            return Outcome.from_error("retry", cause, job.attempt, retry_at=error.at, delay=delay)
        policy = self.policy(job.name)
        decision = policy.decide(error, job.attempt)
        if decision == "retry":
            delay = policy.delay(job.attempt)
            return Outcome.from_error(
                "retry", error, job.attempt, retry_at=utcnow() + timedelta(seconds=delay), delay=delay
            )
        note = ""
        if decision == "discard":
            note = " (discard_on: not retried)"
        elif policy.max_attempts > 1 and job.attempt >= policy.max_attempts:
            note = f" (after {job.attempt} attempts)"
        return Outcome.from_error("failed", error, job.attempt, note=note)


class _Call:
    """A prepared job: a sync call, or an ``async def perform`` to await."""

    __slots__ = ("perform_async", "sync")

    def __init__(
        self,
        sync: Callable[[], Any] | None,
        perform_async: Callable[[], Coroutine[Any, Any, Any]] | None = None,
    ) -> None:
        self.sync = sync
        self.perform_async = perform_async

    def __call__(self) -> Any:
        assert self.sync is not None
        result = self.sync()
        if inspect.iscoroutine(result):  # an adopted task that returned a coroutine
            return run_coroutine_sync(result)
        return result
