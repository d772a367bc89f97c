"""unified_jobs for Django: a Django Tasks backend (``TASKS = {"default": {"BACKEND":
"unified_jobs.django.TasksBackend"}}``), the config in ``settings.UNIFIED_JOBS`` instead of a
YAML file, ``Worker`` classes found in each installed app's ``jobs.py``, enqueue on commit,
and ``manage.py unified_jobs worker|scheduler|doctor|jobs|dashboard``.

See docs/guides/django.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unified_jobs.django.app import get_jobs
    from unified_jobs.django.backend import TasksBackend
    from unified_jobs.django.tasks import worker_for as worker_of
    from unified_jobs.django.transaction import DjangoTransaction

__all__ = ["DjangoTransaction", "TasksBackend", "get_jobs", "worker_of"]


def __getattr__(name: str) -> Any:
    # Lazily: Django imports this package while it sets up, before the Tasks API can be used.
    if name == "TasksBackend":
        from unified_jobs.django.backend import TasksBackend

        return TasksBackend
    if name == "get_jobs":
        from unified_jobs.django.app import get_jobs

        return get_jobs
    if name == "worker_of":  # the Worker class that runs a Django task (for assert_enqueued)
        from unified_jobs.django.tasks import worker_for

        return worker_for
    if name == "DjangoTransaction":  # perform_later(transaction=DjangoTransaction()) in atomic()
        from unified_jobs.django.transaction import DjangoTransaction

        return DjangoTransaction
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
