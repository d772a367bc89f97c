"""The Celery side of unified_jobs: the ``celery.Celery`` app behind ``jobs.celery``.

``CeleryBridge`` builds the app from the config (or adopts an existing one), turns every
registered ``Worker`` into a Celery task named by the worker's ``name``, and makes the app's
own tasks' ``.delay()`` / ``.apply_async()`` follow the configured mode.

A Worker's task runs its job through the app's ``Executor`` and settles the ``Outcome``:
a retry is republished with the backoff as its eta (Celery's own ``retry``, so the message's
``retries`` count and Flower show it); a failure is raised, so Celery records FAILURE and acks
the message (the job store keeps the failure). ``request.JobRequest`` caps the deliveries of a
job whose pool process died at ``workers.max_deliveries``; ``adoption`` routes the app's own
task calls through the mode.

Which settings win when an existing app is adopted: the broker (``queue.uri``), JSON-only
serialization and safe delivery (``task_acks_late``, ``task_reject_on_worker_lost``, and acks
of failed or timed-out jobs, as plain Celery does) always come from unified_jobs;
``broker_transport_options`` are merged (the config's keys win); everything else the app had
(routes, queues, time limits, result backend, ...) is kept.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.app.defaults import DEFAULTS as CELERY_DEFAULTS
from celery.app.task import Task
from celery.exceptions import Reject
from pydantic import ValidationError

from unified_jobs._async import run_on_thread_loop
from unified_jobs._faults import fault_in
from unified_jobs.adapters.celery import adoption, draining, heartbeat, publish_retry, supervisor, unrunnable
from unified_jobs.adapters.celery.kinds import QueueKind, kind_for
from unified_jobs.adapters.celery.kinds.sql import ERROR_CLASS_HEADER, ERROR_HEADER, SqlJobStore
from unified_jobs.adapters.celery.request import (
    BRIDGE_ATTRIBUTE,
    ERROR_CLASS_ATTRIBUTE,
    AlreadySettled,
    JobCancelled,
    JobRequest,
    cancel_watch,
)
from unified_jobs.config import Config
from unified_jobs.core.executor import Executor
from unified_jobs.core.job import Job, new_job_id
from unified_jobs.core.outcome import Outcome
from unified_jobs.core.retry import seconds
from unified_jobs.errors import ConfigError, JobError, WorkerLost

if TYPE_CHECKING:
    from unified_jobs.adapters.base import Adapter
    from unified_jobs.worker import Worker

__all__ = ["CeleryBridge"]

logger = logging.getLogger(__name__)

#: Publishing retries 3 times (0.6 s of pauses) before ``EnqueueError``, and gives up at its first
#: timeout (see ``publish_retry``).
PUBLISH_RETRY_POLICY = publish_retry.PUBLISH_RETRY_POLICY


#: Seconds past a Worker's ``time_limit`` after which Celery's prefork pool kills the process
#: (the executor's own limit should have stopped the attempt before).
HARD_LIMIT_GRACE = 5.0


class CeleryBridge:
    """Owns the Celery app of one ``Jobs``; see the module docstring."""

    def __init__(
        self,
        config: Config,
        executor: Executor,
        existing: Celery | None = None,
        *,
        current_adapter: Callable[[], Adapter],
    ) -> None:
        self.config = config
        self.executor = executor
        self.current_adapter = current_adapter
        self.adopted = existing is not None
        self.app: Celery = existing if existing is not None else Celery("unified_jobs")
        self.queue_config = config.queue
        #: The queue kind's plug-in (None without a queue section).
        self.kind: QueueKind | None = (
            kind_for(config.queue, config.workers) if config.queue is not None else None
        )
        self._routes: dict[str, dict[str, str]] = {}
        self._configure()
        #: Whether the app got the in-memory result backend (a mode without a queue, and none of
        #: its own), given back by ``release``.
        self.results_in_memory = config.workers.mode != "BackgroundQueue" and adoption.results_in_memory(
            self.app
        )
        setattr(self.app, BRIDGE_ATTRIBUTE, self)
        heartbeat.install(self.app)  # its workers write heartbeats (doctor --workers)
        draining.install(self.app)  # a warm stop hands back the jobs not started
        if self.kind is not None and self.kind.records_unrunnable:
            unrunnable.install(self.app)  # what its workers cannot run becomes a failed job
        adoption.route_through_mode(self)
        if self.app.Task.Request == Task.Request:  # keep an adopted app's own request class
            self.app.Task.Request = JobRequest

    # -- configuration -----------------------------------------------------------------------

    def _configure(self) -> None:
        conf = self.app.conf
        settings: dict[str, Any] = {
            "accept_content": ["json"],
            "task_serializer": "json",
            "result_serializer": "json",
            "result_accept_content": ["json"],
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            # A failed or timed-out job is acked, as plain Celery does (so it never loops);
            # the SQL queue marks its row failed from the failure JobRequest notes first.
            "task_acks_on_failure_or_timeout": True,
            "task_publish_retry": True,
            "task_publish_retry_policy": dict(PUBLISH_RETRY_POLICY),
            "broker_connection_retry_on_startup": True,
            "broker_connection_max_retries": None,  # a worker waits for the broker forever, logging
            "task_routes": (self._route, *_as_tuple(conf.task_routes)),
        }
        keep = self.config.workers.keep_celery_settings
        if keep and not self.adopted:
            raise ConfigError(
                "workers.keep_celery_settings keeps an adopted Celery app's own settings, and this "
                "Jobs adopted none: pass celery_app=your_app, or remove keep_celery_settings"
            )
        for name in keep:
            del settings[name]
        if "accept_content" in keep and "json" not in (conf.accept_content or ()):
            raise ConfigError(
                f"workers.keep_celery_settings keeps accept_content {list(conf.accept_content or ())}, "
                "which lacks json: Worker jobs are JSON, so add 'json' to the app's accept_content"
            )
        if not self.adopted:
            settings["task_default_queue"] = "default"
            settings["worker_hijack_root_logger"] = False
        if self.config.workers.mode == "BackgroundQueue" and self.kind is not None:
            broker = self.kind.broker_settings()
            settings.update(broker)  # broker_url, and any other setting the kind needs
            settings["broker_transport_options"] = {
                **(conf.broker_transport_options or {}),
                **broker["broker_transport_options"],
            }
            for key, value in self.kind.worker_defaults().items():
                if conf.get(key) == CELERY_DEFAULTS.get(key):  # an app's own value wins
                    settings[key] = value
        conf.update(settings)

    def _route(self, name: str, *args: Any, **kwargs: Any) -> dict[str, str] | None:
        """A Celery router: a worker's task goes to the worker's queue (others: the app's routes)."""
        route = self._routes.get(name)
        return dict(route) if route is not None else None  # Celery's router mutates what it gets

    @property
    def default_queue(self) -> str:
        return str(self.app.conf.task_default_queue)

    # -- workers as tasks --------------------------------------------------------------------

    def register_worker(self, worker_cls: type[Worker[Any]]) -> None:
        """Make ``worker_cls`` a Celery task named ``worker_cls.name``, routed to its queue."""
        bridge = self
        name = worker_cls.name

        def run(task: Task, *args: Any, **kwargs: Any) -> Any:
            request = task.request
            job_id = request.id or new_job_id()
            if args:
                logger.error(
                    "job %s (%s) rejected: positional arguments %r; workers take keyword args",
                    job_id,
                    name,
                    args,
                )
                raise Reject(f"{name} takes keyword arguments only", requeue=False)
            job = Job(
                id=job_id,
                name=name,
                queue=(request.delivery_info or {}).get("routing_key") or worker_cls.queue,
                kwargs_json=json.dumps(kwargs),
                attempt=int(request.retries or 0) + 1,
            )
            return bridge._run_job(task, job)

        run.__name__ = worker_cls.__name__
        run.__qualname__ = worker_cls.__qualname__
        run.__module__ = worker_cls.__module__
        run.__doc__ = worker_cls.__doc__
        options: dict[str, Any] = {
            "max_retries": None,  # the Worker's Retry decides
            # Safe delivery for Workers even where the app keeps its own defaults (keep_celery_settings).
            "acks_late": True,
            "reject_on_worker_lost": True,
            "acks_on_failure_or_timeout": True,
            "serializer": "json",
        }
        limit = seconds(worker_cls.time_limit, "time_limit")
        if limit is not None:
            options["time_limit"] = limit + HARD_LIMIT_GRACE
        self.app.task(name=name, bind=True, shared=False, lazy=False, typing=False, **options)(run)
        self._routes[name] = {"queue": worker_cls.queue}
        self._declare_queue(worker_cls.queue)

    def _run_job(self, task: Task, job: Job) -> Any:
        """Run one attempt in a worker and settle its outcome the Celery way."""
        store = self.kind.store if self.kind is not None else None
        if store is not None:
            try:
                check = store.record_started(job)
            except Exception as exc:
                if fault_in(exc) not in ("down", "timeout"):
                    raise
                # Run it only once its start is recorded (which counts its deliveries): the job
                # goes back to its queue, where the next delivery tries again. Failing it would
                # ack it with no failed record written: lost.
                raise draining.HandedBack(f"its job store did not answer: {exc}") from exc
            if check.settled:
                logger.warning(
                    "job %s (%s) attempt %d already ended: this delivery repeats a message whose ack "
                    "was lost (the broker restarted or the connection dropped); not run again",
                    job.id,
                    job.name,
                    job.attempt,
                )
                raise AlreadySettled()
            if check.cancelled:
                logger.info("job %s (%s) was cancelled before it started; not run", job.id, job.name)
                raise JobCancelled()
            limit = self.config.workers.max_deliveries
            if check.deliveries > limit:
                outcome = Outcome.from_error(
                    "failed",
                    WorkerLost(
                        f"delivered {check.deliveries - 1} times without finishing (max_deliveries {limit})"
                    ),
                    job.attempt,
                    error_class=None,  # what the attempts died of is unknown
                )
                store.record_outcome(job, outcome)
                self.executor.settled_elsewhere(job, outcome)
                assert outcome.error is not None
                raise _marked(outcome.error, None)
        cancel_watch.ensure(self)
        executor = self.executor
        # The message's custom headers hold the trace context of the enqueue (observers only).
        parent = task.request.headers if executor.observers else None
        supervised = supervisor.supervised()
        if supervised:  # under --pool processes: its hard time limit, and a death mid-job
            tag = (task.request.properties or {}).get("delivery_tag")
            supervisor.job_started(job.id, job.name, job.queue, tag, task.time_limit)
        try:
            outcome = executor.run(job, run_coroutine=run_on_thread_loop, parent=parent)
        finally:
            if supervised:
                supervisor.job_ended(job.id)
        ending = isinstance(outcome.error, SystemExit) and (
            draining.pool_process_ending() or supervisor.cold_stopping()
        )
        if ending:
            # Not the job's: a cold stop ends this pool process (billiard's signal handler
            # raises SystemExit in it; under --pool processes, SupervisedSoloPool's ColdStop).
            # The job is not failed: it goes back to its queue, to run again. Handed back as a
            # result, not by letting the SystemExit end the process, whose exit the threaded
            # pool's cleanup can then wait on for good.
            raise draining.HandedBack("the worker is stopping: ended by a cold stop") from outcome.error
        if store is not None and outcome.kind != "retry":  # a retry's: with its next message
            store.record_outcome(job, outcome)
        if outcome.kind == "succeeded":
            value = outcome.value
            if value is not None and isinstance(store, SqlJobStore):  # its record_outcome keeps none
                store.record_result((task.request.properties or {}).get("delivery_tag"), job.id, value)
            return value
        if outcome.kind == "cancelled":
            raise JobCancelled()
        if outcome.kind == "rejected":
            invalid = isinstance(outcome.error, ValidationError)
            why = "its arguments do not validate" if invalid else "cannot run"
            logger.error("job %s (%s) rejected, %s: %s", job.id, job.name, why, outcome.error_text)
            raise _marked(Reject(f"{job.name}: {outcome.error_text}", requeue=False), outcome.error_class)
        error = outcome.error
        assert error is not None
        if outcome.kind == "retry":
            logger.warning(
                "job %s (%s) attempt %d failed, retrying in %.1fs: %s",
                job.id,
                job.name,
                job.attempt,
                outcome.delay,
                outcome.error_text,
            )
            together = self.kind.record_outcome_with_publish(job, outcome) if self.kind is not None else None
            rider = None
            try:
                with together if together is not None else nullcontext() as rider:
                    raise task.retry(
                        exc=error if isinstance(error, Exception) else None,
                        eta=outcome.retry_at,
                        max_retries=None,
                        # Celery would replace the request's own custom headers (tags, unique key).
                        headers={
                            **(task.request.headers or {}),
                            ERROR_HEADER: outcome.error_text,
                            ERROR_CLASS_HEADER: outcome.error_class,
                        },
                    )
            finally:
                # Not written with the next attempt's message (no such transaction on this
                # kind, or the publish failed): on its own, after it.
                if store is not None and (rider is None or rider.pending):
                    store.record_outcome(job, outcome)
        if not isinstance(error, Exception):  # a job's SystemExit must not end the pool process
            raise _marked(JobError(outcome.error_text), outcome.error_class) from error
        raise error

    def record_failure(
        self, job_id: str, name: str, error: BaseException, trace: str, queue: str = ""
    ) -> None:
        """Put a job that failed outside the executor (worker lost, hard time limit) in the store
        (and tell the executor's observers: the failure counter)."""
        if self.kind is None:
            return
        outcome = Outcome(
            "failed", error=error, error_text=f"{type(error).__name__}: {error}", traceback=trace
        )
        self.executor.settled_elsewhere(Job(id=job_id, name=name, queue=queue, kwargs_json="{}"), outcome)
        try:
            self.kind.store.record_outcome(Job(id=job_id, name=name, queue="", kwargs_json="{}"), outcome)
        except Exception:
            logger.exception("could not record the failure of job %s in the job store", job_id)

    def record_unrunnable(self, job_id: str, name: str, queue: str, body: str, error: BaseException) -> None:
        """Put a message the worker cannot run (``unrunnable``) in the store as a failed job,
        its raw body as its arguments."""
        assert self.kind is not None
        outcome = Outcome("failed", error=error, error_text=f"{type(error).__name__}: {error}")
        job = Job(id=job_id, name=name, queue=queue, kwargs_json="{}")
        self.executor.settled_elsewhere(job, outcome)
        self.kind.store.record_unrunnable(job, body, outcome)

    def on_pool_process_exit(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(pid)`` in each pool process of a worker of this app as it exits
        (Celery's ``worker_process_shutdown``; a killed process runs nothing)."""
        from celery import signals

        def exited(sender: Any = None, pid: int | None = None, **_: Any) -> None:
            callback(pid or os.getpid())

        signals.worker_process_shutdown.connect(exited, weak=False)

    def _declare_queue(self, queue: str) -> None:
        """Declare a Worker's queue on the app, among those a worker consumes without ``-Q``
        (``celery worker`` consumes the queues declared when it starts; a ``-Q`` selection made
        before is left as it is)."""
        queues = self.app.amqp.queues
        if getattr(queues, "_consume_from", None) is None:
            queues.select_add(queue)
        elif queue not in queues:
            queues.add(queue)

    def queue_of(self, name: str) -> str:
        """The queue a task called ``name`` goes to when the call names none."""
        return self._routes.get(name, {}).get("queue") or self.default_queue

    def run_task(self, job: Job) -> Callable[[], Any] | None:
        """How the executor runs a job of the app's own tasks (see ``adoption.task_runner``)."""
        return adoption.task_runner(self, job)

    def release(self) -> None:
        """Give the app back: its tasks publish as plain Celery does again."""
        adoption.release(self)
        heartbeat.uninstall(self.app)
        draining.uninstall(self.app)

    def worker_queues(self) -> list[str]:
        """Every queue this app's workers and tasks use, default queue first."""
        configured = (self.queue_config.queues if self.queue_config else None) or ()
        declared = [q.name for q in (self.app.conf.task_queues or ())]
        names = [
            self.default_queue,
            *(route["queue"] for route in self._routes.values()),
            *configured,
            *declared,
            *_queues_in_routes(self.app.conf.task_routes),
        ]
        return list(dict.fromkeys(names))


def _marked(error: BaseException, error_class: str | None) -> BaseException:
    """``error`` (one of ours, raised in place of the job's own) noted with the job's error
    class, which ``JobRequest.on_failure`` reads (it travels with the exception's pickle)."""
    setattr(error, ERROR_CLASS_ATTRIBUTE, error_class)
    return error


def _queues_in_routes(routes: Any) -> list[str]:
    """Queue names an adopted app's ``task_routes`` mappings name (router functions can't tell)."""
    found = []
    for entry in _as_tuple(routes):
        if isinstance(entry, dict):
            for route in entry.values():
                queue = route.get("queue") if isinstance(route, dict) else None
                name = getattr(queue, "name", queue)
                if isinstance(name, str):
                    found.append(name)
    return found


def _as_tuple(routes: Any) -> tuple[Any, ...]:
    if not routes:
        return ()
    if isinstance(routes, (list, tuple)):
        return tuple(routes)
    return (routes,)
