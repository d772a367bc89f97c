"""Django ``@task`` functions as unified_jobs workers: one ``Worker`` class per task, named by
the task's module path (``shop.tasks.send_receipt``), which is also its Celery task name, so
Flower, the dashboard and ``unified-jobs jobs`` show the task's own name.

The worker process learns of a task when the module defining it is imported: each installed
app's ``tasks.py`` is imported when the app is built (``get_jobs``), and a task defined
elsewhere is registered when its module is imported, as its ``Task`` object is created by our
backend's ``task_class``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import replace
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from unified_jobs.django import compat
from unified_jobs.worker import Worker

__all__ = [
    "DjangoTaskWorker",
    "TaskCall",
    "UnifiedTask",
    "check_json",
    "last_run",
    "register_known_tasks",
    "worker_for",
]

logger = logging.getLogger(__name__)


class TaskCall(BaseModel):
    """A Django task's call: its positional and keyword arguments, as JSON."""

    model_config = ConfigDict(extra="forbid")

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DjangoTaskWorker(Worker[TaskCall]):
    """Runs one Django task (``django_task``); made by ``worker_for``, never subclassed by hand."""

    name = "unified_jobs.django.task"  # replaced in each made class
    #: The Django ``Task`` this worker runs.
    django_task: ClassVar[Any] = None
    #: The ``TASKS`` alias of the backend it was enqueued with.
    backend_alias: ClassVar[str] = "default"

    def perform(self, args: TaskCall) -> Any:
        # Sync, for async tasks too: Django's Task.call runs a coroutine with async_to_sync,
        # whose thread-sensitive ORM calls then come back to this thread and its connection
        # (in a test, the test's own transaction), as Django's ImmediateBackend does.
        _last_run.job_id = self.job_id
        task = self.django_task
        call_args = self._call_args(task, args)
        self._started(task, args)
        try:
            value = task.call(*call_args, **args.kwargs)
            value = compat.normalize_json(value)  # as Django's own backends do
        except BaseException as exc:
            self._finished(task, args, exc)
            raise
        self._finished(task, args, None, value)
        return value

    # -- what Django's task sees -------------------------------------------------------------

    def _call_args(self, task: Any, args: TaskCall) -> list[Any]:
        if task.takes_context:
            return [compat.TaskContext(task_result=self._result(task, args, "RUNNING")), *args.args]
        return list(args.args)

    def _result(self, task: Any, args: TaskCall, status: str, value: Any = None) -> Any:
        from django.utils import timezone

        now = timezone.now()
        result = compat.TaskResult(
            task=task,
            id=self.job_id or "",
            status=compat.TaskResultStatus[status],
            enqueued_at=None,
            started_at=now,
            finished_at=None if status == "RUNNING" else now,
            last_attempted_at=now,
            args=args.args,
            kwargs=args.kwargs,
            backend=self.backend_alias,
            errors=[],
            # One entry per attempt, so that TaskContext.attempt and TaskResult.attempts count
            # them; this process is the one running the current attempt.
            worker_ids=[WORKER_ID] * self.attempt,
        )
        if value is not None:
            object.__setattr__(result, "_return_value", value)
        return result

    def _started(self, task: Any, args: TaskCall) -> None:
        compat.task_started.send(type(task.get_backend()), task_result=self._result(task, args, "RUNNING"))

    def _finished(self, task: Any, args: TaskCall, error: BaseException | None, value: Any = None) -> None:
        status = "SUCCESSFUL" if error is None else "FAILED"
        result = self._result(task, args, status, value)
        if error is not None:
            result.errors.append(compat.TaskError(exception_class_path=_path(type(error)), traceback=""))
        try:
            compat.task_finished.send(type(task.get_backend()), task_result=result)
        except Exception:  # a receiver's error must not change the job's outcome
            logger.exception("a task_finished receiver failed for job %s", self.job_id)


_last_run = threading.local()


def last_run() -> Any:
    """This thread's record of the last Django task job it started (``.job_id``): how the
    backend finds the job that ForegroundBlocking ran and whose error it raised."""
    return _last_run


#: This process, as Django's ``TaskResult.worker_ids`` names it.
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def _new_worker_id() -> None:
    global WORKER_ID
    WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_worker_id)


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# Every Django task our backend has seen, by module path: registered with the Jobs app when it
# is built (or at once, when it is built already).
_known: dict[str, Any] = {}
_workers: dict[str, type[DjangoTaskWorker]] = {}
_lock = threading.Lock()


def worker_for(task: Any) -> type[DjangoTaskWorker]:
    """The Worker class that runs ``task`` (made on first use; one per module path)."""
    path = task.module_path
    made = _workers.get(path)
    if made is not None and made.django_task.func is task.func:
        return made
    with _lock:
        made = _workers.get(path)
        if made is None or made.django_task.func is not task.func:
            # The task as defined (its own queue, priority; no run_after): a worker runs it.
            defined = replace(task, run_after=None) if task.run_after is not None else task
            made = type(
                task.func.__name__,
                (DjangoTaskWorker,),
                {
                    "name": path,
                    "queue": task.queue_name,
                    "django_task": defined,
                    "backend_alias": task.backend,
                    "__module__": task.func.__module__,
                    "__qualname__": task.func.__qualname__,
                    "__doc__": task.func.__doc__,
                },
            )
            _workers[path] = made
        return made


def known(task: Any) -> None:
    """Our backend made (or was handed) ``task``: register its worker with the app if the app
    is built, else when it is."""
    from unified_jobs.django import app

    if _known.setdefault(task.module_path, task) is not task:
        return  # a variant of a known task (``task.using(...)``): the same worker runs it
    jobs = app._jobs
    if jobs is not None:
        _register(jobs, task)


def register_known_tasks(jobs: Any) -> None:
    for task in list(_known.values()):
        _register(jobs, task)


def _register(jobs: Any, task: Any) -> type[DjangoTaskWorker]:
    worker_cls = worker_for(task)
    if jobs.workers.get(worker_cls.name) is not worker_cls:
        jobs.register(worker_cls)
    return worker_cls


class UnifiedTask(compat.Task):
    """Django's ``Task``, as our backend's ``task_class``: a task defined with ``@task`` is
    known to unified_jobs (and registered as a worker) from the moment it is defined."""

    __slots__ = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        known(self)


def check_json(what: str, value: Any) -> Any:
    """``value`` normalized as Django does (tuples become lists), and checked to come back
    equal from JSON, as a worker will read it; ``TypeError`` naming ``what`` if not."""
    try:
        normalized = compat.normalize_json(value)
        text = json.dumps(normalized, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the task's {what} must be JSON-serializable: {exc}") from None
    back = json.loads(text)
    if back != normalized:
        raise TypeError(
            f"the task's {what} do not survive JSON unchanged ({normalized!r} would arrive as "
            f"{back!r}); use str keys and JSON types"
        )
    return normalized
