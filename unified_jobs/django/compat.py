"""Django's Tasks API (DEP 14), from Django 6's ``django.tasks`` or, on Django 4.2-5.2, from
the ``django-tasks`` backport: the same names either way."""

from __future__ import annotations

import django

__all__ = [
    "DEFAULT_TASK_PRIORITY",
    "SOURCE",
    "TASK_MAX_PRIORITY",
    "TASK_MIN_PRIORITY",
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "normalize_json",
    "task",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]


if django.VERSION >= (6, 0):
    from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus, task, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import DEFAULT_TASK_PRIORITY, TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, TaskError
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json

    #: Where the Tasks API comes from.
    SOURCE = "django.tasks"
else:
    try:
        from django_tasks import task, task_backends
        from django_tasks.base import Task, TaskContext, TaskResult, TaskResultStatus
    except ImportError as exc:
        raise ImportError(
            f"unified_jobs.django needs Django's Tasks API: Django 6 has it (django.tasks); on Django "
            f"{django.get_version()} install the backport: pip install 'unified-jobs[django]' "
            "(or pip install django-tasks)"
        ) from exc
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import DEFAULT_TASK_PRIORITY, TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, TaskError
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json

    SOURCE = "django_tasks"
