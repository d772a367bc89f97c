"""A Celery app's own tasks follow the mode: their ``.delay()`` / ``.apply_async()`` /
``send_task`` go to the mode's adapter, and the executor runs them.

Only the app a ``Jobs`` owns or explicitly adopted is touched, and only that app object:
``route_through_mode`` gives it an instance-level ``send_task`` (every ``apply_async`` ends
there, whatever the task's ``base=`` class), and ``release`` takes it away again
(``Jobs.shutdown``). Any other Celery app in the process is left as it was.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from celery import states
from celery.app.task import Task
from celery.exceptions import Retry
from celery.result import AsyncResult, EagerResult
from celery.signals import beat_init
from celery.utils.nodenames import gethostname
from kombu.exceptions import EncodeError

from unified_jobs.adapters.celery import publish_retry
from unified_jobs.core.job import Job, new_job_id, utcnow
from unified_jobs.core.retry import RetryRequested
from unified_jobs.errors import EnqueueError

if TYPE_CHECKING:
    from unified_jobs.adapters.celery.app import CeleryBridge

__all__ = ["IN_MEMORY_RESULTS", "release", "results_in_memory", "route_through_mode", "task_runner"]

logger = logging.getLogger(__name__)

#: What a call carries of the canvas it belongs to (kept with the job, given to the tracer).
_CANVAS_OPTIONS = ("link", "link_error", "chain", "chord", "group_id", "group_index", "root_id", "parent_id")
#: ``Celery.send_task``'s positional parameters after ``name, args, kwargs``.
_SEND_TASK_POSITIONAL = ("countdown", "eta", "task_id", "producer", "connection", "router", "result_cls")


def route_through_mode(bridge: CeleryBridge) -> None:
    """Make ``bridge.app``'s task calls follow the mode of the bridge's ``Jobs``."""
    app = bridge.app
    if "send_task" in vars(app):
        return
    original = app.send_task

    def send_task(name: str, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        adapter = bridge.current_adapter()
        if getattr(adapter, "publishes_to_celery", False):
            with publish_retry.bounded():  # a broker that hangs: one timeout, not one per retry
                return original(name, args, kwargs, *rest, **options)
        task = options.get("task_type") or app._tasks.get(name)
        if task is None:
            raise EnqueueError(
                f"{name}: no such task is registered in this process, and in {adapter.kind} mode "
                "there is no queue for another process to take it from"
            )
        if name == "celery.chord_unlock" and adapter.kind == "ForegroundBlocking":
            raise EnqueueError(
                f"a chord needs a result backend that counts its parts ({type(app.backend).__name__} "
                "polls them with celery.chord_unlock, which cannot wait in ForegroundBlocking mode): "
                "use a Redis or cache result backend, or none (results are then kept in memory)"
            )
        options.update(zip(_SEND_TASK_POSITIONAL, rest, strict=False))
        job = _job_for_call(bridge, name, args, kwargs, options)
        parent = app.current_worker_task if options.get("add_to_parent", True) else None
        value = adapter.enqueue(job)
        if adapter.kind == "ForegroundBlocking":
            return EagerResult(job.id, value, states.SUCCESS, name=name)
        result = AsyncResult(job.id, app=app, task_name=name)
        if parent is not None:  # as Celery's send_task: the caller's result lists it as a child
            parent.add_trail(result)
        return result

    send_task.__wrapped__ = original  # type: ignore[attr-defined]
    app.send_task = send_task
    _guard_beat(bridge)


def _guard_beat(bridge: CeleryBridge) -> None:
    """``celery beat`` for an app in a mode without a queue would run each periodic task inside
    the beat process (its calls follow the mode): stop it at start, saying why, instead."""

    def on_beat_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not bridge.app:
            return
        adapter = bridge.current_adapter()
        if getattr(adapter, "publishes_to_celery", False):
            return
        message = (
            f"celery beat: workers.mode is {adapter.kind}, which has no queue, so each periodic task "
            "would run inside this beat process. Run beat (and the workers) with a config whose "
            "workers.mode is BackgroundQueue, or call the tasks from your app's own process"
        )
        logger.critical(message)
        print(message, file=sys.stderr)
        raise SystemExit(78)  # EX_CONFIG; Celery's signal dispatch catches only Exception

    beat_init.connect(on_beat_init, weak=False, dispatch_uid=_beat_guard_uid(bridge))


def _beat_guard_uid(bridge: CeleryBridge) -> str:
    return f"unified_jobs.beat_guard.{id(bridge.app)}"


#: The result backend an app without one gets in a mode without a queue, so that ``.get()``,
#: ``.state``, chains and chords work in this process, as in Celery's eager mode. Celery's
#: in-memory cache backend: shared by the process's threads, it keeps the last 5,000 results.
IN_MEMORY_RESULTS = "cache+memory://"


def results_in_memory(app: Any) -> bool:
    """Give ``app`` the in-memory result backend if it has none; whether it did."""
    if app.conf.result_backend not in (None, "", "disabled", "disabled://"):
        return False
    app.conf.result_backend = IN_MEMORY_RESULTS
    vars(app._local).pop("backend", None)  # this thread's DisabledBackend, if it made one
    return True


def release(bridge: CeleryBridge) -> None:
    """Undo ``route_through_mode``: the app's tasks publish as plain Celery does again."""
    vars(bridge.app).pop("send_task", None)
    if bridge.results_in_memory and bridge.app.conf.result_backend == IN_MEMORY_RESULTS:
        bridge.app.conf.result_backend = None
        vars(bridge.app._local).pop("backend", None)
    beat_init.disconnect(dispatch_uid=_beat_guard_uid(bridge))


def task_runner(bridge: CeleryBridge, job: Job) -> Callable[[], Any] | None:
    """How the executor runs a job of one of the app's own tasks (None: no such task).

    The task runs through Celery's worker tracer, as a Celery worker runs it: its state and
    result go to the app's result backend (in a mode without a queue, an in-memory one if it
    has none: ``IN_MEMORY_RESULTS``), ``update_state`` works, ``link`` and ``link_error`` callbacks
    fire, a chain goes on with its next task and a chord's last part calls its body (all with
    ``apply_async``, so they follow the mode too). One difference: when the task asks to retry
    (``self.retry(countdown=...)``, ``autoretry_for``), the request says it is eager, so Celery
    does not republish it; that is handed to the executor as a ``RetryRequested`` at the
    task's eta, so the in-process pool waits out the delay as a Celery worker would.
    """
    task = bridge.app.tasks.get(job.name)
    if task is None:
        return None
    args = json.loads(job.args_json)
    kwargs = json.loads(job.kwargs_json)
    canvas = json.loads(job.extra_json)

    def run() -> Any:
        return _apply(task, args, kwargs, job, canvas).get()

    return run


def _apply(task: Task, args: Any, kwargs: Any, job: Job, canvas: dict[str, Any]) -> EagerResult:
    """One attempt (``job.attempt``) through Celery's tracer, which raises ``RetryRequested``
    rather than republishing a retrying task."""
    from celery.app.trace import build_tracer

    app = task._get_app()
    retries = job.attempt - 1
    request = {
        "id": job.id,
        "task": task.name,
        "root_id": canvas.get("root_id") or job.id,
        "parent_id": canvas.get("parent_id"),
        "group": canvas.get("group_id"),
        "group_index": canvas.get("group_index"),
        "chord": canvas.get("chord"),
        "chain": canvas.get("chain"),
        "retries": retries,
        "is_eager": True,  # Task.retry raises Retry instead of publishing the next try
        "loglevel": 0,
        "hostname": gethostname(),
        "callbacks": _as_list(canvas.get("link")),
        "errbacks": _as_list(canvas.get("link_error")),
        "timelimit": (
            None
            if task.time_limit is None and task.soft_time_limit is None
            else [task.time_limit, task.soft_time_limit]
        ),
        "ignore_result": task.ignore_result,
        # not eager here: errback tasks are sent with apply_async (so they follow the mode)
        "delivery_info": {"is_eager": False, "routing_key": job.queue, "priority": job.priority},
    }
    # The worker's tracer (not eager): results, states and chord parts go to the backend.
    tracer = build_tracer(task.name, task, eager=False, propagate=False, app=app)
    ret = tracer(job.id, args, kwargs, request)
    retval, trace = ret.retval, None
    if isinstance(retval, ExceptionInfo):
        retval, trace = retval.exception, retval.traceback
        if isinstance(retval, ExceptionWithTraceback):
            retval = retval.exc
    if isinstance(retval, Retry):
        raise RetryRequested(_retry_at(retval.when), retval.exc)
    state = states.SUCCESS if ret.info is None else ret.info.state
    return EagerResult(job.id, retval, state, traceback=trace, name=task.name)


def _retry_at(when: Any) -> datetime:
    if isinstance(when, datetime):
        return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
    return utcnow() + timedelta(seconds=float(when or 0))


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _job_for_call(bridge: CeleryBridge, name: str, args: Any, kwargs: Any, options: dict[str, Any]) -> Job:
    canvas = {key: options[key] for key in _CANVAS_OPTIONS if options.get(key) is not None}
    try:
        args_json = json.dumps(list(args or ()))
        kwargs_json = json.dumps(dict(kwargs or {}))
        extra_json = json.dumps(canvas)
    except (TypeError, ValueError) as exc:  # what publishing with the json serializer raises
        raise EncodeError(f"arguments of {name} are not JSON serializable: {exc}") from exc
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
        id=options.get("task_id") or new_job_id(),
        name=name,
        queue=queue or bridge.queue_of(name),
        args_json=args_json,
        kwargs_json=kwargs_json,
        extra_json=extra_json,
        run_at=run_at,
    )
