"""``Executor``: the one place a job is validated, built and performed.

Every adapter (inline, the in-process pool, the Celery task of a queue worker, the test
recorder) hands a ``Job`` to ``Executor.run`` and settles the ``Outcome`` it gets back its own
way: the retry policy, the time limit and cancellation are decided here once.

Metrics and tracing hook in here once too, as ``JobObserver``s (``Executor.observers``, see
``core.observers``; the implementations live in ``unified_jobs.observability``, so the core
imports neither prometheus-client nor OpenTelemetry). Without observers an attempt costs one
attribute test more.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from pydantic import ValidationError

from unified_jobs._async import run_coroutine_sync
from unified_jobs.core.job import Job, load_args, utcnow
from unified_jobs.core.limits import CancelToken, watchdog
from unified_jobs.core.observers import JobObserver, Observed
from unified_jobs.core.outcome import Outcome
from unified_jobs.core.retry import NO_RETRY, Retry, RetryRequested, seconds
from unified_jobs.errors import NotRegisteredError, TimeLimitExceeded

if TYPE_CHECKING:
    from unified_jobs.worker import Worker

__all__ = ["CoroutineRunner", "Executor", "JobObserver", "TaskRunner"]

#: Runs a coroutine to its end from sync code (each adapter has its own loop policy).
CoroutineRunner = Callable[[Coroutine[Any, Any, Any]], Any]
#: For a job that is not a registered Worker: the call that runs it (an adopted Celery
#: task), or None when nothing by that name exists.
TaskRunner = Callable[[Job], "Callable[[], Any] | None"]


class Executor(Observed):
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
        # perform function -> is it an ``async def``? (keyed by the function, so a class whose
        # ``perform`` is replaced is looked at again)
        self._async_perform: dict[Any, bool] = {}
        self.observers: tuple[JobObserver, ...] = ()  # see Observed

    def settled_elsewhere(self, job: Job, outcome: Outcome) -> None:
        """Tell the observers of a delivery that ended outside ``run`` (see ``JobObserver``);
        as for ``run``, only of a registered Worker's job."""
        if job.name in self.workers:
            super().settled_elsewhere(job, outcome)

    # -- what a job is -----------------------------------------------------------------------

    def worker_class(self, name: str) -> type[Worker[Any]] | None:
        return self.workers.get(name)

    def is_async(self, name: str) -> bool:
        """True when ``name`` is a registered worker whose ``perform`` is an ``async def``."""
        worker_cls = self.workers.get(name)
        if worker_cls is None:
            return False
        try:  # _is_async, inlined: asked for every job the pool hands out
            known = self._async_perform.get(worker_cls.perform)
        except TypeError:
            known = None
        return self._is_async(worker_cls) if known is None else known

    def _is_async(self, worker_cls: type[Worker[Any]]) -> bool:
        perform = worker_cls.perform
        try:
            known = self._async_perform.get(perform)
        except TypeError:  # an unhashable callable as perform: just ask
            return worker_cls.is_async()
        if known is None:
            known = self._async_perform[perform] = worker_cls.is_async()
        return known

    def policy(self, name: str) -> Retry:
        """The retry policy of the worker called ``name``."""
        worker_cls = self.workers.get(name)
        own = getattr(worker_cls, "retry", None) if worker_cls is not None else None
        return own or self.default_retry or NO_RETRY

    def time_limit(self, name: str) -> float | None:
        worker_cls = self.workers.get(name)
        return _limit_of(worker_cls) if worker_cls is not None else None

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        job: Job,
        *,
        token: CancelToken | None = None,
        run_coroutine: CoroutineRunner = run_coroutine_sync,
        parent: Any = None,
    ) -> Outcome:
        """Run one attempt of ``job`` (its ``attempt`` field says which) and tell how it went.

        Never raises for the job's own failure; ``SystemExit`` and ``KeyboardInterrupt`` from
        the job become a failed outcome too, so no caller's thread dies of a job. ``parent``
        is for the observers (``JobObserver.starting``): the message's headers in a queue
        worker, what ``capture`` returned where the job was handed over, or ``None``.
        """
        if self.observers and job.name in self.workers:
            return self._run_observed(job, token, run_coroutine, parent)
        token = token or _Token()
        call = self._prepared(job, token)
        if isinstance(call, Outcome):
            return call
        return self._run_call(job, token, call, run_coroutine)

    def _run_observed(
        self, job: Job, token: CancelToken | None, run_coroutine: CoroutineRunner, parent: Any
    ) -> Outcome:
        started = self._starting(job, parent)
        try:
            token = token or _Token()
            call = self._prepared(job, token)
            outcome = call if isinstance(call, Outcome) else self._run_call(job, token, call, run_coroutine)
        except BaseException as exc:  # not the job's (run() returns those): the observers still end
            self._ended(job, Outcome.from_error("failed", exc, job.attempt), started)
            raise
        self._ended(job, outcome, started)
        return outcome

    async def arun(self, job: Job, *, token: CancelToken | None = None, parent: Any = None) -> Outcome:
        """``run`` for the caller's event loop: an ``async def perform`` is awaited on it.

        A ``token`` given already bound to the task that awaits this (``new_token``, then
        ``bind_task``) saves looking the task up.
        """
        if self.observers and job.name in self.workers:
            started = self._starting(job, parent)
            try:
                outcome = await self._arun(job, token)
            except BaseException as exc:  # as in _run_observed
                self._ended(job, Outcome.from_error("failed", exc, job.attempt), started)
                raise
            self._ended(job, outcome, started)
            return outcome
        return await self._arun(job, token)

    async def _arun(self, job: Job, token: CancelToken | None) -> Outcome:
        token = token or _Token()
        call = self._prepared(job, token)
        if isinstance(call, Outcome):
            return call
        if call.perform_async is None:  # a sync perform blocks the loop, as documented
            return self._run_call(job, token, call, run_coroutine_sync)
        limit = call.limit
        running = self.running
        running[job.id] = token
        try:
            if limit is None:  # _guard without a time limit, without its own coroutine
                if token._task is None:
                    task = asyncio.current_task()
                    if task is not None:
                        token.bind_task(task)
                value = await call.perform_async()
            else:
                value = await self._guard(call, limit, token)
        except BaseException as exc:  # the job's, decided below
            return self._failure(job, token, exc, limit)
        finally:
            running.pop(job.id, None)
        return self._done(job, token, value)

    def _prepared(self, job: Job, token: CancelToken) -> _Call | Outcome:
        """The job made ready to run, or the ``rejected`` outcome of one that cannot run."""
        try:
            call = self._prepare(job, token)
        except (ValidationError, NotRegisteredError, ValueError, TypeError) as exc:
            return Outcome.from_error("rejected", exc, job.attempt)
        if call is None:
            return Outcome.from_error(
                "rejected", NotRegisteredError(f"no worker or task named {job.name!r} here"), job.attempt
            )
        return call

    def _run_call(self, job: Job, token: CancelToken, call: _Call, run_coroutine: CoroutineRunner) -> Outcome:
        limit = call.limit
        running = self.running
        running[job.id] = token
        try:
            if call.perform_async is not None:
                return self._settle(job, token, limit, lambda: run_coroutine(self._guard(call, limit, token)))
            return self._settle(job, token, limit, call, sync_limit=limit)
        finally:
            running.pop(job.id, None)

    @staticmethod
    def new_token() -> CancelToken:
        """A fresh token for one attempt (cheaper than ``CancelToken()``, the same behaviour)."""
        return _Token()

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
        args = load_args(worker_cls.args_model, job.kwargs_json)
        worker = worker_cls(self.context, job.id)
        worker.attempt = job.attempt
        worker._cancel_token = token
        limit = _limit_of(worker_cls)
        if self._is_async(worker_cls):
            return _Call(None, lambda: cast("Coroutine[Any, Any, Any]", worker.perform(args)), limit)
        return _Call(lambda: worker.perform(args), None, limit)

    async def _guard(self, call: _Call, limit: float | None, token: CancelToken) -> Any:
        if token._task is None:
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
        if value is None and job.attempt <= _MAX_SHARED:
            return _SUCCEEDED[job.attempt]  # Outcome is frozen: the common one is shared
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


_MAX_SHARED = 8
_SUCCEEDED = {attempt: Outcome("succeeded", attempt) for attempt in range(1, _MAX_SHARED + 1)}


def _limit_of(worker_cls: type[Worker[Any]]) -> float | None:
    raw = getattr(worker_cls, "time_limit", None)
    return None if raw is None else seconds(raw, "time_limit")


class _Flag(threading.Event):
    """A ``threading.Event`` whose condition is made only if someone waits on it.

    A token is made for every job and almost never waited on (``set`` and ``is_set`` are what
    the executor, the watchdog and ``Worker.cancelled`` use), while ``threading.Event`` builds
    a ``Condition`` and its lock at once: a tenth of what a no-op job cost.
    """

    def __init__(self) -> None:  # no super().__init__(): that is the Condition
        self._flag = False

    def _condition(self) -> threading.Condition:
        cond: threading.Condition | None = self.__dict__.get("_cond")
        if cond is None:  # setdefault is atomic: two first waiters share one condition
            cond = self.__dict__.setdefault("_cond", threading.Condition(threading.Lock()))
        return cond

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True  # first: a waiter that makes the condition after this sees the flag
        cond: threading.Condition | None = self.__dict__.get("_cond")
        if cond is not None:
            with cond:
                cond.notify_all()

    def clear(self) -> None:
        self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        cond = self._condition()
        with cond:
            if not self._flag:
                cond.wait(timeout)
            return self._flag

    def _at_fork_reinit(self) -> None:
        cond: threading.Condition | None = self.__dict__.get("_cond")
        if cond is not None:
            cond._at_fork_reinit()  # type: ignore[attr-defined]


class _Token(CancelToken):
    """The token the executor makes when the caller gives none: a ``CancelToken`` on a
    ``_Flag``."""

    __slots__ = ()

    def __init__(self) -> None:
        self._event = _Flag()
        self._task = None
        self._loop = None
        self.expired = False


class _Call:
    """A prepared job: a sync call, or an ``async def perform`` to await, and its time limit."""

    __slots__ = ("limit", "perform_async", "sync")

    def __init__(
        self,
        sync: Callable[[], Any] | None,
        perform_async: Callable[[], Coroutine[Any, Any, Any]] | None = None,
        limit: float | None = None,
    ) -> None:
        self.sync = sync
        self.perform_async = perform_async
        self.limit = limit

    def __call__(self) -> Any:
        assert self.sync is not None
        result = self.sync()
        if inspect.iscoroutine(result):  # an adopted task that returned a coroutine
            return run_coroutine_sync(result)
        return result
