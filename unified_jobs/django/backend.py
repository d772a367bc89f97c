"""``TasksBackend``: Django's Tasks framework (DEP 14) on unified_jobs.

``TASKS = {"default": {"BACKEND": "unified_jobs.django.TasksBackend"}}`` sends every
``@task`` function's ``enqueue()`` through the project's ``Jobs`` app (``settings.UNIFIED_JOBS``),
so the config's ``workers.mode`` decides where it runs: inline (ForegroundBlocking), in this
process (BackgroundAsync) or on a Redis, Postgres, SQLite or RabbitMQ queue's workers.
"""

from __future__ import annotations

import logging
from datetime import timezone
from typing import Any

from unified_jobs.core.job import JobInfo
from unified_jobs.django import compat
from unified_jobs.django.app import get_jobs
from unified_jobs.django.tasks import DjangoTaskWorker, UnifiedTask, check_json, known, last_run, worker_for
from unified_jobs.django.transaction import DjangoTransaction
from unified_jobs.jobs import MAX_PRIORITY

__all__ = ["TasksBackend", "from_django_priority", "to_django_status"]

logger = logging.getLogger(__name__)

_SPAN = compat.TASK_MAX_PRIORITY - compat.TASK_MIN_PRIORITY  # 200


def from_django_priority(priority: int) -> int:
    """Django's priority (-100..100, higher first) on unified_jobs' 0..9 (higher first), in
    order and evenly: -100 -> 0, 0 -> 5, 100 -> 9 (each of ours covers about 22 of Django's)."""
    twice = (int(priority) - compat.TASK_MIN_PRIORITY) * MAX_PRIORITY * 2 // _SPAN
    return (twice + 1) // 2  # rounded half up


#: A job's status as Django's ``TaskResultStatus`` names it.
_STATUS = {
    "queued": "READY",
    "scheduled": "READY",
    "retrying": "READY",
    "processing": "RUNNING",
    "completed": "SUCCESSFUL",
    "failed": "FAILED",
    "cancelled": "FAILED",
}


#: ``TaskError.exception_class_path`` of a failure whose exception is not known.
_UNKNOWN_ERROR = "unified_jobs.errors.JobError"


def to_django_status(status: str) -> Any:
    return compat.TaskResultStatus[_STATUS[status]]


class TasksBackend(compat.BaseTaskBackend):
    """Django Tasks backend on unified_jobs. Settings, per ``TASKS`` alias:

    - ``QUEUES``: the queue names tasks may use (Django's; default ``["default"]``); a queue
      worker consumes each of them.
    - ``ENQUEUE_ON_COMMIT`` (default True): inside ``transaction.atomic()``, a task is enqueued
      once the transaction commits and never if it rolls back; on a Postgres or SQLite queue in
      the project's own database, its row is written in that very transaction.
    - ``OPTIONS``: ``{"database": "default"}``, the ``DATABASES`` alias whose transactions
      enqueue waits for.

    The capability flags say what the config's mode and queue kind do (see
    docs/guides/django.md).
    """

    task_class = UnifiedTask

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.enqueue_on_commit = bool(params.get("ENQUEUE_ON_COMMIT", True))
        options = dict(self.options or {})
        self.database = options.pop("database", "default")
        if options:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown keys {sorted(options)}; unified_jobs.django."
                "TasksBackend takes 'database' (the rest of the config is settings.UNIFIED_JOBS)"
            )

    # -- what this backend can do (in the mode and kind of settings.UNIFIED_JOBS) ------------

    @property
    def supports_defer(self) -> bool:
        """``run_after`` is honoured (every mode but ForegroundBlocking, which runs at once)."""
        return bool(get_jobs().adapter.capabilities.delay)

    #: ``priority`` orders waiting tasks; ForegroundBlocking runs each task at once, so there
    #: is no order to keep (as Django's ImmediateBackend, which says True too).
    supports_priority = True
    supports_async_task = True

    @property
    def supports_get_result(self) -> bool:
        """Any process can read a result: the job store is the queue's (BackgroundQueue), and it
        keeps finished jobs (not ``queue.on_ack: delete``). The in-process modes keep results in
        this process's memory: ``get_result`` works there, but only in this process."""
        jobs = get_jobs()
        if jobs.mode != "BackgroundQueue":
            return False
        queue = jobs.config.queue
        return not (queue is not None and queue.on_ack == "delete")

    # -- enqueue -----------------------------------------------------------------------------

    def validate_task(self, task: Any) -> None:
        super().validate_task(task)
        name = task.queue_name
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise compat.InvalidTask(f"queue_name must be a non-empty name, got {task.queue_name!r}")

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        from django.db import connections
        from django.utils import timezone as dj_timezone

        self.validate_task(task)
        call = {
            "args": check_json("arguments", list(args)),
            "kwargs": check_json("keyword arguments", kwargs),
        }
        jobs = get_jobs()
        known(task)
        worker_cls = worker_for(task)
        if jobs.workers.get(worker_cls.name) is not worker_cls:
            jobs.register(worker_cls)
        run_at = task.run_after
        if run_at is not None and dj_timezone.is_naive(run_at):  # USE_TZ = False: local time
            run_at = dj_timezone.make_aware(run_at).astimezone(timezone.utc)
        transaction = None
        if self.enqueue_on_commit and connections[self.database].in_atomic_block:
            transaction = DjangoTransaction(self.database)
        enqueued_at = dj_timezone.now()
        ran = last_run()
        ran.job_id = None
        try:
            handle = jobs.perform_later(
                worker_cls,
                call,
                run_at=run_at,
                queue=task.queue_name,
                priority=from_django_priority(task.priority),
                transaction=transaction,
            )
        except Exception:
            if jobs.mode != "ForegroundBlocking" or transaction is not None:
                raise
            # ForegroundBlocking ran the task, and raised its error: Django's backends report a
            # failed task in its result instead (as the ImmediateBackend does).
            if ran.job_id is None or jobs.job(ran.job_id) is None:
                raise  # it did not run: validation, or the app
            job_id = ran.job_id
        else:
            job_id = handle.id
        finally:
            if transaction is not None:
                transaction.close()
        result = compat.TaskResult(
            task=task,
            id=job_id,
            status=compat.TaskResultStatus.READY,
            enqueued_at=enqueued_at,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=call["args"],
            kwargs=call["kwargs"],
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        compat.task_enqueued.send(type(self), task_result=result)
        if jobs.mode == "ForegroundBlocking" and transaction is None:
            return self._result(task, jobs.job(job_id)) or result  # it has run
        return result

    # -- results -----------------------------------------------------------------------------

    def get_result(self, result_id: str) -> Any:
        info = get_jobs().job(result_id)
        result = self._result(None, info) if info is not None else None
        if result is None:
            raise compat.TaskResultDoesNotExist(result_id)
        return result

    def _result(self, task: Any, info: JobInfo | None) -> Any:
        """``info`` as Django's ``TaskResult``; None if it is not a Django task's job."""
        if info is None:
            return None
        worker_cls = get_jobs().workers.get(info.worker)
        if not (isinstance(worker_cls, type) and issubclass(worker_cls, DjangoTaskWorker)):
            return None
        if task is None:
            task = worker_cls.django_task
        if info.queue != task.queue_name and (not self.queues or info.queue in self.queues):
            task = task.using(queue_name=info.queue)
        call = info.args if isinstance(info.args, dict) else {}
        errors = []
        if info.last_error is not None and info.status in ("failed", "retrying", "cancelled"):
            errors.append(
                compat.TaskError(
                    # The attempt's own exception, or (a worker that died, a lease that
                    # expired: ``last_error`` says which) unified_jobs' generic job error.
                    exception_class_path=info.error_class or _UNKNOWN_ERROR,
                    traceback=info.traceback or info.last_error,
                )
            )
        status = to_django_status(info.status)
        result = compat.TaskResult(
            task=task,
            id=info.id,
            status=status,
            enqueued_at=info.enqueued_at,
            started_at=info.started_at,
            finished_at=info.finished_at if status in ("SUCCESSFUL", "FAILED") else None,
            last_attempted_at=info.started_at,
            args=call.get("args", []),
            kwargs=call.get("kwargs", {}),
            backend=self.alias,
            errors=errors,
            worker_ids=["unified_jobs"] * info.attempts,
        )
        if status == "SUCCESSFUL":
            object.__setattr__(result, "_return_value", info.result)
        return result

    def check(self, **kwargs: Any) -> list[Any]:
        from django.core import checks

        try:
            get_jobs()
        except Exception as exc:
            return [checks.Error(str(exc), id="unified_jobs.E001")]
        return []
