"""The Celery side of unified_jobs: the ``celery.Celery`` app behind ``jobs.celery``.

``CeleryBridge`` builds the app from the config (or adopts an existing one), turns every
registered ``Worker`` into a Celery task named by the worker's ``name``, and makes the app's
own tasks' ``.delay()`` / ``.apply_async()`` follow the configured mode.

Which settings win when an existing app is adopted: the broker (``queue.uri``), JSON-only
serialization and safe delivery (``task_acks_late``, ``task_reject_on_worker_lost``) always come
from unified_jobs; ``broker_transport_options`` are merged (the config's keys win); everything
else the app had (routes, queues, time limits, result backend, ...) is kept.
"""

from __future__ import annotations

import inspect
import json
import logging
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from celery import Celery, signature
from celery.app.task import Task
from celery.exceptions import Reject
from celery.result import AsyncResult, EagerResult
from celery.worker.request import Request
from kombu.exceptions import EncodeError
from pydantic import ValidationError

from unified_jobs._async import run_on_thread_loop
from unified_jobs.config import QueueConfig
from unified_jobs.errors import EnqueueError
from unified_jobs.job import Job, new_job_id, utcnow

if TYPE_CHECKING:
    from unified_jobs.jobs import Jobs
    from unified_jobs.worker import Worker

__all__ = ["CeleryBridge", "JobRequest", "broker_settings"]

logger = logging.getLogger(__name__)

#: Publishing retries at most this long in all before ``EnqueueError`` (seconds, roughly).
PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def broker_settings(queue: QueueConfig) -> dict[str, Any]:
    """Celery settings for the configured queue kind."""
    if queue.kind == "Redis":
        restore_every = max(1, min(10, queue.visibility_timeout // 4))
        options: dict[str, Any] = {
            "visibility_timeout": queue.visibility_timeout,
            # Sweep for a dead worker's unacked jobs every few seconds, not every 100 s.
            "unacked_restore_interval": restore_every,
            "unacked_restore_throttle": 1,
            # Our priorities are 0-9 (higher first); kombu's Redis lists are ordered 0 first.
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
        }
        return {"broker_url": queue.uri, "broker_transport_options": options}
    from unified_jobs.adapters import sql

    return {
        "broker_url": sql.broker_url(queue.kind, queue.uri),
        "broker_transport_options": sql.transport_options(
            lease_sec=queue.lease_sec,
            poll_interval_sec=queue.poll_interval_sec,
            table_prefix=queue.table_prefix,
            on_ack=queue.on_ack,
        ),
    }


class JobRequest(Request):  # type: ignore[misc]
    """Celery's worker-side request, which also tells the queue why a job failed.

    It runs in the worker's main process, which owns the broker channel; the SQL queue writes
    the text to the job row's ``last_error`` when the failed job is rejected.
    """

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        note = getattr(getattr(self._message, "channel", None), "note_failure", None)
        exception = getattr(exc_info, "exception", None)
        if note is not None and exception is not None:
            note(self._message.delivery_tag, f"{type(exception).__name__}: {exception}")
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class CeleryBridge:
    """Owns the Celery app of one ``Jobs``; see the module docstring."""

    def __init__(self, jobs: Jobs, existing: Celery | None = None) -> None:
        self.jobs = jobs
        self.adopted = existing is not None
        self.app: Celery = existing if existing is not None else Celery("unified_jobs")
        self.queue_config = jobs.config.queue
        self._routes: dict[str, dict[str, str]] = {}
        self._configure()
        self._route_task_calls_through_the_mode()
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
            # A job that raised is rejected, not acked: the SQL queues mark its row failed.
            "task_acks_on_failure_or_timeout": False,
            "task_publish_retry": True,
            "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
            "broker_connection_retry_on_startup": True,
            "broker_connection_max_retries": None,  # a worker waits for the broker forever, logging
            "task_routes": (self._route, *_as_tuple(conf.task_routes)),
        }
        if not self.adopted:
            settings["task_default_queue"] = "default"
            settings["worker_hijack_root_logger"] = False
        if self.jobs.config.workers.mode == "BackgroundQueue" and self.queue_config is not None:
            broker = broker_settings(self.queue_config)
            settings["broker_url"] = broker["broker_url"]
            settings["broker_transport_options"] = {
                **(conf.broker_transport_options or {}),
                **broker["broker_transport_options"],
            }
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
        jobs = self.jobs
        name = worker_cls.name

        def run(task: Task, *args: Any, **kwargs: Any) -> None:
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
            )
            try:
                call = jobs.prepare(job)
            except ValidationError as exc:
                logger.error("job %s (%s) rejected, its arguments do not validate: %s", job_id, name, exc)
                raise Reject(f"invalid arguments for {name}: {exc}", requeue=False) from None
            result = call()
            if inspect.iscoroutine(result):
                run_on_thread_loop(result)

        run.__name__ = worker_cls.__name__
        run.__qualname__ = worker_cls.__qualname__
        run.__module__ = worker_cls.__module__
        run.__doc__ = worker_cls.__doc__
        self.app.task(name=name, bind=True, shared=False, lazy=False, typing=False)(run)
        self._routes[name] = {"queue": worker_cls.queue}
        self._declare_queue(worker_cls.queue)

    def _declare_queue(self, queue: str) -> None:
        queues = self.app.amqp.queues
        if queue not in queues:
            queues.add(queue)

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

    # -- the app's own tasks follow the mode ---------------------------------------------------

    def run_task(self, job: Job) -> Callable[[], Any] | None:
        """How ``Jobs.prepare`` runs a job of a plain Celery task (None: no such task).

        The task runs through Celery's eager tracer (``task.apply``), so ``link`` and
        ``link_error`` callbacks fire, and a chain goes on with the next task; both are
        enqueued with ``apply_async``, so they follow the mode too.
        """
        task = self.app.tasks.get(job.name)
        if task is None:
            return None
        args = json.loads(job.args_json)
        kwargs = json.loads(job.kwargs_json)
        canvas = json.loads(job.extra_json)

        def run() -> Any:
            # throw=False so that Celery's tracer calls the errbacks; .get() then re-raises.
            value = task.apply(
                args=args,
                kwargs=kwargs,
                task_id=job.id,
                throw=False,
                link=canvas.get("link"),
                link_error=canvas.get("link_error"),
            ).get()
            rest = canvas.get("chain")
            if rest:
                signature(rest[-1], app=self.app).apply_async((value,), chain=rest[:-1] or None)
            return value

        return run

    def _route_task_calls_through_the_mode(self) -> None:
        """Make this app's tasks' ``apply_async`` follow the mode (see ``_apply_async``)."""
        _bridges[self.app] = self
        if Task.apply_async is not _apply_async:
            Task.apply_async = _apply_async

    def _job_for_call(
        self, task: Task, args: Any, kwargs: Any, task_id: str | None, options: dict[str, Any]
    ) -> Job:
        canvas = {key: options[key] for key in _CANVAS_OPTIONS if options.get(key)}
        unsupported = sorted(key for key in ("chord", "group_id") if options.get(key))
        if unsupported:
            raise EnqueueError(
                f"{task.name}: {', '.join(unsupported)} needs a result backend and a real queue; "
                f"it is not supported in {self.jobs.mode} mode (use BackgroundQueue)"
            )
        try:
            args_json = json.dumps(list(args or ()))
            kwargs_json = json.dumps(dict(kwargs or {}))
            extra_json = json.dumps(canvas)
        except (TypeError, ValueError) as exc:  # what publishing with the json serializer raises
            raise EncodeError(f"arguments of {task.name} are not JSON serializable: {exc}") from exc
        run_at = options.get("eta")
        countdown = options.get("countdown")
        if countdown is not None:
            run_at = utcnow() + timedelta(seconds=float(countdown))
        elif isinstance(run_at, str):
            run_at = datetime.fromisoformat(run_at)
        if isinstance(run_at, datetime) and run_at.tzinfo is None:
            run_at = run_at.replace(tzinfo=timezone.utc)  # Celery reads a naive eta as UTC
        queue = options.get("queue")
        if queue is not None and not isinstance(queue, str):
            queue = getattr(queue, "name", str(queue))
        return Job(
            id=task_id or new_job_id(),
            name=task.name,
            queue=queue or self._routes.get(task.name, {}).get("queue") or self.default_queue,
            args_json=args_json,
            kwargs_json=kwargs_json,
            extra_json=extra_json,
            run_at=run_at,
        )


_CANVAS_OPTIONS = ("link", "link_error", "chain")

#: The bridge of each adopted (or created) Celery app, for the patched ``Task.apply_async``.
_bridges: weakref.WeakKeyDictionary[Celery, CeleryBridge] = weakref.WeakKeyDictionary()
_original_apply_async = Task.apply_async


def _apply_async(
    task: Task, args: Any = None, kwargs: Any = None, task_id: str | None = None, *rest: Any, **options: Any
) -> Any:
    """``Task.apply_async`` for every task class (custom ``base=`` classes too): a task of an app
    that a ``Jobs`` adopted follows that app's mode; any other task is untouched."""
    bridge = _bridges.get(task._get_app())
    if bridge is None or task.name.startswith("celery."):
        return _original_apply_async(task, args, kwargs, task_id, *rest, **options)
    adapter = bridge.jobs.adapter
    if getattr(adapter, "publishes_to_celery", False):
        return _original_apply_async(task, args, kwargs, task_id, *rest, **options)
    job = bridge._job_for_call(task, args, kwargs, task_id, options)
    value = adapter.enqueue(job)
    if adapter.kind == "ForegroundBlocking":
        return EagerResult(job.id, value, "SUCCESS", name=task.name)
    return AsyncResult(job.id, app=bridge.app, task_name=task.name)


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


def flush_queues(app: Celery, queues: list[str]) -> int:
    """Delete the queued jobs of these queues only (never FLUSHDB); returns how many."""
    total = 0
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in queues:
            total += channel.queue_purge(queue) or 0
    return total
