"""``Jobs``: the app. It holds the config, the context and the registered workers, and hands
each enqueued job to the adapter the config's mode picks."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta, tzinfo
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from unified_jobs import adapters, observability
from unified_jobs.adapters.base import Adapter
from unified_jobs.config import Config, load_config
from unified_jobs.core.executor import Executor
from unified_jobs.core.job import Job, JobHandle, JobInfo, JobStatus, new_job_id, utcnow
from unified_jobs.core.retry import seconds
from unified_jobs.core.unique import unique_key as make_unique_key
from unified_jobs.core.unique import unique_seconds
from unified_jobs.errors import (
    DuplicateWorkerError,
    InvalidOptionError,
    NotRegisteredError,
    ShutdownError,
)
from unified_jobs.scheduler import Recurring, Schedule, Scheduler, define
from unified_jobs.worker import Worker

if TYPE_CHECKING:
    from celery import Celery

    from unified_jobs.adapters.celery.app import CeleryBridge

__all__ = ["MAX_PRIORITY", "Jobs"]

logger = logging.getLogger(__name__)

W = TypeVar("W", bound=type[Worker[Any]])

#: Priorities run from 0 (the default) to 9; higher runs first.
MAX_PRIORITY = 9


class Jobs:
    """The unified_jobs app.

    ``Jobs(config, context=None)`` builds it from a ``Config``; ``Jobs.from_config()`` loads
    ``config/<env>.yaml`` first. ``context`` is handed to every worker as ``self.ctx``.
    """

    def __init__(self, config: Config, context: Any = None, celery_app: Any = None) -> None:
        self.config = config
        self.context = context
        self._celery_app = celery_app
        self._workers: dict[str, type[Worker[Any]]] = {}
        self._closed = False
        self._bridge: CeleryBridge | None = None
        self._executor = Executor(
            self._workers,
            context,
            default_retry=config.workers.default_retry(),
            tasks=lambda job: self._bridge.run_task(job) if self._bridge is not None else None,
        )
        observability.install(self)  # tracing, when opentelemetry-api is installed
        if celery_app is not None:
            self.celery_bridge()  # adopt it now, so its tasks follow the mode from the start
        self._adapter = adapters.build(config.workers.mode, config, self._executor, self.celery_bridge)
        self._recurring = self._make_recurring()

    @classmethod
    def from_config(
        cls,
        env: str | None = None,
        config_dir: str | os.PathLike[str] | None = None,
        context: Any = None,
        celery_app: Any = None,
    ) -> Jobs:
        """Load ``<config_dir>/<env>.yaml`` (env: ``$UNIFIED_JOBS_ENV``, default development;
        config_dir: ``$UNIFIED_JOBS_CONFIG_DIR``, default ``config`` in the working directory)."""
        return cls(load_config(env, config_dir), context=context, celery_app=celery_app)

    # -- registry ----------------------------------------------------------------------------

    def register(self, worker_cls: W) -> W:
        """Register a worker class; also usable as a class decorator. Returns the class."""
        if not (isinstance(worker_cls, type) and issubclass(worker_cls, Worker)):
            raise TypeError(f"register() takes a Worker subclass, got {worker_cls!r}")
        worker_cls._check_definition()
        existing = self._workers.get(worker_cls.name)
        if existing is worker_cls:
            worker_cls._unified_jobs_app = self  # the shortcuts follow the app registered last
            return worker_cls
        if existing is not None:
            raise DuplicateWorkerError(
                f"two workers are named {worker_cls.name!r}: {_qualname(existing)} and "
                f'{_qualname(worker_cls)}; give one of them another `name = "..."`'
            )
        self._workers[worker_cls.name] = worker_cls
        worker_cls._unified_jobs_app = self
        if not worker_cls._queue_named:
            worker_cls.queue = self._bridge.default_queue if self._bridge is not None else "default"
        if self._bridge is not None:
            self._bridge.register_worker(worker_cls)
        self._adapter.on_register(worker_cls)
        return worker_cls

    @property
    def workers(self) -> Mapping[str, type[Worker[Any]]]:
        """The registered workers by name (read-only)."""
        return MappingProxyType(self._workers)

    def worker(self, name: str) -> type[Worker[Any]]:
        """The registered worker called ``name``; ``NotRegisteredError`` if none."""
        try:
            return self._workers[name]
        except KeyError:
            raise NotRegisteredError(
                f"no worker named {name!r} is registered with this app; call jobs.register(...) "
                f"with it (registered: {', '.join(sorted(self._workers)) or 'none'})"
            ) from None

    # -- enqueueing --------------------------------------------------------------------------

    def perform_later(
        self,
        worker_cls: type[Worker[Any]],
        args: BaseModel | dict[str, Any],
        *,
        wait: timedelta | None = None,
        run_at: datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        unique_key: str | None = None,
        transaction: Any = None,
    ) -> JobHandle:
        """Enqueue a job of ``worker_cls`` with ``args`` (a model instance or a dict).

        The arguments are validated (``pydantic.ValidationError`` if invalid, and nothing is
        enqueued) and serialized to JSON in every mode. ``wait`` (a timedelta) or ``run_at``
        (an aware datetime) delay the job; ``queue`` overrides the worker's queue; ``priority``
        is 0-9, higher first.

        ``unique_key`` (or the worker's ``unique_for``) makes the job unique: while a job of
        this worker with the same key waits or runs, this returns that job's handle and
        enqueues nothing. ``transaction`` (a SQLAlchemy ``Connection`` or ``Session`` in a
        transaction): the job exists if and only if that transaction commits; see
        docs/guides/transactional-enqueue.md.
        """
        job = self._build_job(worker_cls, args, wait, run_at, queue, priority, unique_key)
        if self._executor.observers:  # metrics, tracing
            return self._observed([job], lambda: [self._enqueue(job, transaction)])[0]
        return self._enqueue(job, transaction)

    def _enqueue(self, job: Job, transaction: Any) -> JobHandle:
        if transaction is not None:
            refused = self._adapter.enqueue_in_transaction(transaction, [job])
        elif job.unique_key is not None:
            refused = self._adapter.enqueue_unique([job])
        else:
            self._adapter.enqueue(job)
            return job.handle()
        return self._holder_handle(refused[job.id], job, transaction) if refused else job.handle()

    async def aperform_later(
        self,
        worker_cls: type[Worker[Any]],
        args: BaseModel | dict[str, Any],
        *,
        wait: timedelta | None = None,
        run_at: datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        unique_key: str | None = None,
    ) -> JobHandle:
        """``perform_later`` for async code: the same checks; the enqueue does not block the
        event loop (in ForegroundBlocking mode the job itself runs in the caller's loop, so a
        sync ``perform`` does)."""
        job = self._build_job(worker_cls, args, wait, run_at, queue, priority, unique_key)
        if self._executor.observers:  # metrics, tracing

            async def enqueue() -> list[JobHandle]:
                return [await self._aenqueue(job)]

            return (await self._aobserved([job], enqueue))[0]
        return await self._aenqueue(job)

    async def _aenqueue(self, job: Job) -> JobHandle:
        if job.unique_key is not None:
            refused = await self._adapter.aenqueue_unique([job])
            return self._holder_handle(refused[job.id], job) if refused else job.handle()
        await self._adapter.aenqueue(job)
        return job.handle()

    def perform_all_later(
        self,
        worker_cls: type[Worker[Any]],
        args_list: Iterable[BaseModel | dict[str, Any]],
        *,
        wait: timedelta | None = None,
        run_at: datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        transaction: Any = None,
    ) -> list[JobHandle]:
        """Enqueue many jobs of one worker at once (ActiveJob's ``perform_all_later``).

        Every argument set is validated before anything is enqueued, so one invalid item
        raises ``pydantic.ValidationError`` and enqueues none. Queue adapters publish the batch
        in few round trips (Redis: pipelined). A worker with ``unique_for`` gets, for an
        argument set already waiting or running (or twice in the batch), the existing job's
        handle. ``transaction``: as for ``perform_later``, for the whole batch.
        """
        batch = [self._build_job(worker_cls, args, wait, run_at, queue, priority) for args in args_list]
        if batch and self._executor.observers:  # metrics, tracing
            return self._observed(batch, lambda: self._enqueue_batch(worker_cls, batch, transaction))
        return self._enqueue_batch(worker_cls, batch, transaction)

    def _enqueue_batch(
        self, worker_cls: type[Worker[Any]], batch: list[Job], transaction: Any
    ) -> list[JobHandle]:
        if transaction is not None:
            refused = self._adapter.enqueue_in_transaction(transaction, batch)
        elif worker_cls.unique_for is not None:
            refused = self._adapter.enqueue_unique(batch)
        else:
            self._adapter.enqueue_many(batch)
            return [job.handle() for job in batch]
        return [
            self._holder_handle(refused[j.id], j, transaction) if j.id in refused else j.handle()
            for j in batch
        ]

    def _observed(self, jobs: list[Job], enqueue: Callable[[], list[JobHandle]]) -> list[JobHandle]:
        """``enqueue()`` between the observers' ``enqueuing`` and ``enqueued`` (an enqueue span
        that is current while the adapter publishes, so its trace context goes with the jobs;
        the enqueue counter)."""
        executor = self._executor
        states = executor.enqueuing(jobs)
        try:
            handles = enqueue()
        except BaseException as exc:
            executor.enqueued(jobs, self._enqueued_anyway(jobs), states, exc)
            raise
        executor.enqueued(jobs, handles, states)
        return handles

    async def _aobserved(
        self, jobs: list[Job], enqueue: Callable[[], Awaitable[list[JobHandle]]]
    ) -> list[JobHandle]:
        """``_observed`` for ``aperform_later``."""
        executor = self._executor
        states = executor.enqueuing(jobs)
        try:
            handles = await enqueue()
        except BaseException as exc:
            executor.enqueued(jobs, self._enqueued_anyway(jobs), states, exc)
            raise
        executor.enqueued(jobs, handles, states)
        return handles

    def _enqueued_anyway(self, jobs: list[Job]) -> list[JobHandle] | None:
        """The handles of jobs that were enqueued although the enqueue raised: in
        ForegroundBlocking the error is the job's own, raised once it ran."""
        return [job.handle() for job in jobs] if self._adapter.kind == "ForegroundBlocking" else None

    def _holder_handle(self, holder: str, job: Job, transaction: Any = None) -> JobHandle:
        """The handle of the job that holds ``job``'s unique key: as the store has it, except in
        a caller's transaction (which may hold the lock a read of the store would wait for)."""
        info = self._adapter.job(holder) if transaction is None else None
        if info is None:
            return JobHandle(holder, job.name, job.queue, job.run_at, job.priority)
        return JobHandle(holder, info.worker, info.queue, info.run_at, info.priority)

    def _build_job(
        self,
        worker_cls: type[Worker[Any]],
        args: BaseModel | dict[str, Any],
        wait: timedelta | None,
        run_at: datetime | None,
        queue: str | None,
        priority: int | None,
        unique_key: str | None = None,
    ) -> Job:
        if self._closed:
            raise ShutdownError("this Jobs app was shut down; it takes no more jobs")
        self._check_registered(worker_cls)
        # Validated, dumped, and checked to validate back from the JSON, as a queue's worker
        # will do: fail here, not there.
        payload = Job.dump_args(worker_cls.args_model, args)
        due = None if wait is None and run_at is None else self._due_time(wait, run_at)
        job = Job(
            new_job_id(),
            worker_cls.name,
            _check_queue(queue if queue is not None else worker_cls.queue),
            payload,
            "[]",
            None if priority is None else self._check_priority(priority),
            due,
        )
        unique_for = worker_cls.unique_for
        if unique_key is None and unique_for is None:
            return job
        held = unique_seconds(seconds(unique_for, "unique_for"), due, job.enqueued_at)
        return replace(job, unique_key=make_unique_key(job.name, unique_key, payload), unique_for=held)

    def _check_registered(self, worker_cls: type[Worker[Any]], where: str = "") -> None:
        if self._workers.get(getattr(worker_cls, "name", None)) is not worker_cls:  # type: ignore[arg-type]
            raise NotRegisteredError(
                f"{where}worker {getattr(worker_cls, 'name', worker_cls)!r} is not registered with this "
                f"app; call jobs.register({getattr(worker_cls, '__qualname__', worker_cls)}) first"
            )

    def _due_time(self, wait: timedelta | None, run_at: datetime | None) -> datetime | None:
        if wait is not None and run_at is not None:
            raise InvalidOptionError("give either wait= or run_at=, not both")
        if wait is not None:
            if not isinstance(wait, timedelta):
                raise InvalidOptionError(f"wait= takes a datetime.timedelta, got {wait!r}")
            if wait < timedelta(0):
                raise InvalidOptionError(f"wait= must not be negative, got {wait}")
            run_at = utcnow() + wait
        elif run_at is not None:
            if not isinstance(run_at, datetime):
                raise InvalidOptionError(f"run_at= takes a datetime, got {run_at!r}")
            if run_at.tzinfo is None or run_at.utcoffset() is None:
                raise InvalidOptionError(
                    f"run_at= must be timezone-aware, got naive {run_at.isoformat()}; "
                    "use e.g. datetime.now(timezone.utc) + timedelta(...)"
                )
        if run_at is not None and not self._adapter.capabilities.delay:
            logger.debug("%s ignores delays: the job runs now", self._adapter.kind)
        return run_at

    def _check_priority(self, priority: int | None) -> int | None:
        if priority is None:
            return None
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
            raise InvalidOptionError(
                f"priority= takes an int from 0 to {MAX_PRIORITY} (higher runs first), got {priority!r}"
            )
        return priority

    # -- the job store ---------------------------------------------------------------------

    def status(self, job: JobHandle | str) -> JobStatus | None:
        """A job's status: ``queued``, ``scheduled``, ``processing``, ``retrying``, ``completed``,
        ``failed`` or ``cancelled``; ``None`` if the job store does not know it (never enqueued
        here, or a completed job past ``workers.keep_completed``)."""
        return self._adapter.status(_id_of(job))

    def job(self, job: JobHandle | str) -> JobInfo | None:
        """Everything the job store knows of a job (``JobInfo``), or ``None``."""
        return self._adapter.job(_id_of(job))

    def failed(self, worker: type[Worker[Any]] | str | None = None, limit: int = 100) -> list[JobInfo]:
        """Failed jobs, newest first: of one worker (class or name) or of all."""
        name = worker if isinstance(worker, str) or worker is None else worker.name
        return self._adapter.store.failed(name, limit)

    def retry(self, job: JobHandle | str) -> bool:
        """Enqueue a failed job again (its attempts start over); False if it is not failed."""
        return self._adapter.retry(_id_of(job))

    def discard(self, job: JobHandle | str) -> bool:
        """Remove a failed or cancelled job from the store; False if there was none."""
        return self._adapter.store.discard(_id_of(job))

    def run_now(self, job: JobHandle | str) -> bool:
        """Make a job that waits for its ``run_at`` (a delayed job, or a retry's backoff) due
        now, the same job (its id, its attempt); False if it was not waiting so, or the queue
        cannot hand it over early (RabbitMQ's delay queues: cancel it and enqueue it again)."""
        return self._adapter.run_now(_id_of(job))

    def cancel(self, job: JobHandle | str) -> bool:
        """Cancel a job: a waiting one never runs; a running one is told to stop (an ``async
        def perform`` gets ``CancelledError``, a sync one sees ``self.cancelled()``).
        False if the job is neither waiting nor running where it can be reached."""
        return self._adapter.cancel(_id_of(job))

    @property
    def executor(self) -> Executor:
        """The one place this app's jobs are validated, built and performed."""
        return self._executor

    # -- recurring jobs ----------------------------------------------------------------------

    def schedule(
        self,
        worker_cls: type[Worker[Any]],
        args: BaseModel | dict[str, Any],
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        name: str | None = None,
        tz: str | tzinfo | None = None,
        missed: str | None = None,
        tags: Iterable[str] | None = None,
        queue: str | None = None,
    ) -> Schedule:
        """Run ``worker_cls`` with ``args`` on a schedule: ``cron`` (five fields, in ``tz``,
        default UTC) or ``every`` (a timedelta; ticks at multiples of it since 1970-01-01 UTC).

        ``name`` (default: the worker's name) identifies the schedule in the state every
        scheduler shares; ``missed`` (``latest``, ``all``, ``skip``; default
        ``scheduler.missed``) says what becomes of ticks missed while no scheduler ran;
        ``tags`` (default: the worker's) select it for ``start --scheduler --tag``; ``queue``
        overrides the worker's. Everything is checked now (``InvalidOptionError`` naming the
        schedule; ``NotRegisteredError`` for an unregistered worker). A new schedule's first
        run is its next tick. Returns the ``Schedule``.
        """
        self._check_registered(worker_cls, "schedule(): ")
        defined = define(
            name if name is not None else worker_cls.name,
            worker_cls,
            args,
            cron=cron,
            every=every,
            tz=tz,
            missed=missed,
            tags=None if tags is None else tuple(tags),
            queue=queue,
        )
        self._recurring.book.add(defined)
        if self._adapter.kind == "BackgroundAsync" and not self._closed:
            self._recurring.start()  # the app runs its own schedule, in this process
        return defined

    def run_schedule_once(self, at: datetime | None = None) -> list[JobHandle]:
        """One scheduler pass at ``at`` (an aware datetime; default now): enqueue each
        schedule's due tick that no scheduler has enqueued yet, and return their handles. A
        second pass for the same tick enqueues nothing. Works in every mode (for tests, and
        ForegroundBlocking, which runs no scheduler of its own)."""
        return self._recurring.run_once(at)

    @property
    def schedules(self) -> Mapping[str, Schedule]:
        """Every schedule by name (read-only): the config's ``scheduler.jobs``, bound to their
        workers now (``ConfigError`` if one names an unregistered worker or its args do not
        validate), and those of ``schedule()``."""
        return MappingProxyType(self._recurring.schedules())

    def _scheduler(self, tags: Iterable[str] = ()) -> Scheduler[JobHandle]:
        """A new scheduler over this app's schedules (those with one of ``tags``, if given),
        for the processes that run one: ``start --worker``, ``--scheduler``, ``-s``."""
        return self._recurring.scheduler(tuple(tags))

    def _make_recurring(self) -> Recurring:
        recurring = Recurring(
            self.config.scheduler,
            self._workers,
            state=lambda: self._adapter.schedule_state(),
            enqueue=self._enqueue_tick,
        )
        if self.config.scheduler.jobs and self._adapter.kind == "BackgroundAsync":
            recurring.start()  # its first pass binds the schedules, once workers are registered
        return recurring

    def _enqueue_tick(self, schedule: Schedule, tick: datetime, transaction: Any = None) -> JobHandle:
        # The job is due at its tick, which is past (run_at says which tick a job is for); a
        # tick ahead of the clock (run_schedule_once(at=...) in a test) runs now all the same.
        # ``transaction``: the state's, where winning the tick and writing its job are one.
        run_at = tick if tick <= utcnow() else None
        return self.perform_later(
            self.worker(schedule.worker),
            dict(schedule.args),
            run_at=run_at,
            queue=schedule.queue,
            transaction=transaction,
        )

    # -- Celery ------------------------------------------------------------------------------

    @property
    def celery(self) -> Celery:
        """The real ``celery.Celery`` app: ``celery -A myapp.jobs:jobs.celery worker`` works."""
        return self.celery_bridge().app

    def celery_bridge(self) -> CeleryBridge:
        """The Celery side of the app, made on first use (it imports celery)."""
        if self._bridge is None:
            self._bridge = adapters.celery_bridge(
                self.config, self._executor, self._celery_app, lambda: self._adapter
            )
            for worker_cls in self._workers.values():
                self._bridge.register_worker(worker_cls)
        return self._bridge

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def adapter(self) -> Adapter:
        """The adapter the mode picked (or the one swapped in by ``unified_jobs.testing``)."""
        return self._adapter

    def _replace_adapter(self, adapter: Adapter) -> Adapter:
        """Swap in another adapter (for the test toolkit); returns the previous one.

        Registered workers are replayed into the new adapter's ``on_register``.
        """
        previous, self._adapter = self._adapter, adapter
        for worker_cls in self._workers.values():
            adapter.on_register(worker_cls)
        return previous

    def _adapter_for(self, mode: str) -> Adapter:
        """A fresh adapter of ``mode`` on this app's executor (for the test toolkit)."""
        return adapters.build(mode, self.config, self._executor, self.celery_bridge)

    @property
    def mode(self) -> str:
        """The mode in force: the config's, or the test toolkit's while it swapped the adapter."""
        return self._adapter.kind

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop what the app started. The BackgroundAsync pool is drained first (up to
        ``timeout`` seconds); jobs that could not run are logged by id. An adopted Celery
        app is given back: its tasks publish as plain Celery does again."""
        self._recurring.stop()  # the BackgroundAsync scheduler thread: no more ticks
        # Jobs enqueued by running jobs while the pool drains are still taken (and drained).
        self._adapter.close(wait=wait, timeout=timeout)
        self._closed = True
        if self._bridge is not None:
            self._bridge.release()  # the Celery app's tasks publish as plain Celery does again

    def __enter__(self) -> Jobs:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<Jobs mode={self.mode} workers={len(self._workers)}>"


def _id_of(job: JobHandle | str) -> str:
    return job.id if isinstance(job, JobHandle) else job


def _check_queue(queue: str) -> str:
    if not isinstance(queue, str) or not queue.strip():
        raise InvalidOptionError(f"queue= takes a non-empty string, got {queue!r}")
    return queue


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
