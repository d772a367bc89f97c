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
from celery import signature, states
from celery.signals import beat_init
from celery.app.task import Task
from celery.exceptions import Retry
from celery.result import AsyncResult, EagerResult
from celery.utils.nodenames import gethostname
from kombu.exceptions import EncodeError

from unified_jobs.core.job import Job, new_job_id, utcnow
from unified_jobs.core.retry import RetryRequested
from unified_jobs.errors import EnqueueError

if TYPE_CHECKING:
    from unified_jobs.adapters.celery.app import CeleryBridge

__all__ = ["release", "route_through_mode", "task_runner"]

logger = logging.getLogger(__name__)

_CANVAS_OPTIONS = ("link", "link_error", "chain")
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
        task = options.get("task_type") or app._tasks.get(name)
        if getattr(adapter, "publishes_to_celery", False) or task is None or name.startswith("celery."):
            return original(name, args, kwargs, *rest, **options)
        options.update(zip(_SEND_TASK_POSITIONAL, rest, strict=False))
        job = _job_for_call(bridge, name, args, kwargs, options)
        value = adapter.enqueue(job)
        if adapter.kind == "ForegroundBlocking":
            return EagerResult(job.id, value, states.SUCCESS, name=name)
        return AsyncResult(job.id, app=app, task_name=name)

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


def release(bridge: CeleryBridge) -> None:
    """Undo ``route_through_mode``: the app's tasks publish as plain Celery does again."""
    vars(bridge.app).pop("send_task", None)
    beat_init.disconnect(dispatch_uid=_beat_guard_uid(bridge))


def task_runner(bridge: CeleryBridge, job: Job) -> Callable[[], Any] | None:
    """How the executor runs a job of one of the app's own tasks (None: no such task).

    The task runs through Celery's eager tracer, as ``task.apply`` does, so ``link`` and
    ``link_error`` callbacks fire and a chain goes on with the next task (both enqueued with
    ``apply_async``, so they follow the mode too). One difference: when the task asks to retry
    (``self.retry(countdown=...)``, ``autoretry_for``), that is handed to the executor as a
    ``RetryRequested`` at the task's eta, instead of Celery's eager rerun at once, so the
    in-process pool waits out the delay as a Celery worker would.
    """
    task = bridge.app.tasks.get(job.name)
    if task is None:
        return None
    args = json.loads(job.args_json)
    kwargs = json.loads(job.kwargs_json)
    canvas = json.loads(job.extra_json)

    def run() -> Any:
        value = _apply(task, args, kwargs, job, canvas).get()
        rest = canvas.get("chain")
        if rest:
            signature(rest[-1], app=bridge.app).apply_async((value,), chain=rest[:-1] or None)
        return value

    return run


def _apply(task: Task, args: Any, kwargs: Any, job: Job, canvas: dict[str, Any]) -> EagerResult:
    """``Task.apply`` for one attempt (``job.attempt``), which raises ``RetryRequested`` rather
    than rerunning a retrying task at once."""
    from celery.app.trace import build_tracer

    app = task._get_app()
    retries = job.attempt - 1
    request = {
        "id": job.id,
        "task": task.name,
        "root_id": job.id,
        "retries": retries,
        "is_eager": True,
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
        "delivery_info": {"is_eager": True, "routing_key": job.queue, "priority": job.priority},
    }
    # propagate=False, so that the tracer calls the errbacks; .get() re-raises the error.
    tracer = build_tracer(task.name, task, eager=True, propagate=False, app=app)
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
    canvas = {key: options[key] for key in _CANVAS_OPTIONS if options.get(key)}
    unsupported = sorted(key for key in ("chord", "group_id") if options.get(key))
    if unsupported:
        raise EnqueueError(
            f"{name}: {', '.join(unsupported)} needs a result backend and a real queue; "
            f"it is not supported in {bridge.current_adapter().kind} mode (use BackgroundQueue)"
        )
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
