"""The project's ``Jobs`` app, built from ``settings.UNIFIED_JOBS`` once per process, with the
``Worker`` classes of every installed app's ``jobs.py`` registered.

``get_jobs`` is also the command line's app: ``unified-jobs --app unified_jobs.django:get_jobs
start --worker`` (with ``DJANGO_SETTINGS_MODULE`` set) is what ``manage.py unified_jobs worker``
runs.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import threading
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from unified_jobs.config import Config
from unified_jobs.errors import ConfigError
from unified_jobs.jobs import Jobs
from unified_jobs.worker import Worker

__all__ = ["SETTING", "DjangoConfigError", "get_jobs", "reset"]

logger = logging.getLogger(__name__)

#: The setting that holds the config (the same keys as a config file's YAML).
SETTING = "UNIFIED_JOBS"
#: Optional: ``"module:attribute"`` (or a dotted path) of an existing Celery app to adopt, so its
#: tasks follow ``workers.mode`` too (``Jobs(config, celery_app=...)``).
CELERY_APP_SETTING = "UNIFIED_JOBS_CELERY_APP"
#: The module of each installed app whose ``Worker`` classes are registered.
JOBS_MODULE = "jobs"
#: The module of each installed app imported so that its Django ``@task`` functions are known
#: to the worker (as Celery's ``autodiscover_tasks`` does).
TASKS_MODULE = "tasks"


class DjangoConfigError(ConfigError, ImproperlyConfigured):
    """``settings.UNIFIED_JOBS`` is missing or invalid; the message names the key."""


_lock = threading.RLock()
_jobs: Jobs | None = None


def get_jobs() -> Jobs:
    """The project's ``Jobs`` app: built from ``settings.UNIFIED_JOBS`` on first use in this
    process (``django.setup()`` first, when the settings are not loaded yet), with the workers
    of each installed app's ``jobs.py`` registered and its ``tasks.py`` imported."""
    jobs = _jobs
    if jobs is not None:
        return jobs
    _setup_django()
    with _lock:
        if _jobs is None:
            _build()
        assert _jobs is not None
        return _jobs


def reset() -> None:
    """Shut the app down and forget it; the next ``get_jobs()`` builds it again from the
    settings (``override_settings(UNIFIED_JOBS=...)`` calls this)."""
    global _jobs
    with _lock:
        jobs, _jobs = _jobs, None
    if jobs is not None:
        jobs.shutdown(wait=False)


def _build() -> None:
    global _jobs
    from django.conf import settings

    data = getattr(settings, SETTING, None)
    if data is None:
        raise DjangoConfigError(
            f"settings.{SETTING} is not set; add the config there, e.g. {SETTING} = "
            '{"workers": {"mode": "BackgroundQueue"}, "queue": {"kind": "Sqlite", "uri": '
            '"sqlite:///jobs.sqlite3"}} (the same keys as a config file; see docs/guides/django.md)'
        )
    if not isinstance(data, Mapping):
        raise DjangoConfigError(
            f"settings.{SETTING} must be a dict (workers:, queue:, ...), got {type(data).__name__}"
        )
    try:
        config = Config.from_dict(dict(data), source=f"settings.{SETTING}")
    except ConfigError as exc:
        raise DjangoConfigError(str(exc)) from None
    config = _with_task_queues(config)
    celery_app = _celery_app(getattr(settings, CELERY_APP_SETTING, None))
    jobs = Jobs(config, celery_app=celery_app)
    _jobs = jobs
    try:
        _discover(jobs)
        _prepare_sql_queue(config)
    except BaseException:
        _jobs = None
        jobs.shutdown(wait=False)
        raise


def _prepare_sql_queue(config: Config) -> None:
    """Create the SQL queue's tables now, before a request's ``atomic()`` block can hold the
    database (a SQLite file in particular): a job enqueued in that block is written in it, and
    creating the tables from another connection then would wait for the block to end."""
    queue = config.queue
    if config.workers.mode != "BackgroundQueue" or queue is None or queue.kind not in ("Sqlite", "Postgres"):
        return
    from unified_jobs.adapters.sql import ensure_schema
    from unified_jobs.adapters.sql.engine import with_timeouts

    uri = with_timeouts(
        queue.uri, connect_timeout=queue.connect_timeout_sec, read_timeout=queue.read_timeout_sec
    )
    try:
        ensure_schema(uri, queue.table_prefix)
    except Exception as exc:  # the queue may be down now; its first enqueue will say so
        logger.warning("could not prepare the %s queue's tables yet: %s", queue.kind, exc)


def _celery_app(spec: Any) -> Any:
    if spec is None:
        return None
    if not isinstance(spec, str) or not spec:
        raise DjangoConfigError(
            f'settings.{CELERY_APP_SETTING} must be "module:attribute" of a Celery app, got {spec!r}'
        )
    from unified_jobs.cli._app import import_string

    module, sep, attr = spec.partition(":")
    if not sep:
        module, _, attr = spec.rpartition(".")
    return import_string(f"{module}:{attr}", f"settings.{CELERY_APP_SETTING}")


def _discover(jobs: Jobs) -> None:
    """Register the Workers of each installed app's ``jobs.py``; import its ``tasks.py`` (the
    Django tasks in it register with the backend as they are defined)."""
    from django.apps import apps
    from django.utils.module_loading import module_has_submodule

    from unified_jobs.django.tasks import register_known_tasks

    for config in apps.get_app_configs():
        if config.name.startswith("unified_jobs"):
            continue
        for name in (JOBS_MODULE, TASKS_MODULE):
            if module_has_submodule(config.module, name):
                module = importlib.import_module(f"{config.name}.{name}")
                if name == JOBS_MODULE:
                    register_workers_of(jobs, module)
    register_known_tasks(jobs)


def _with_task_queues(config: Config) -> Config:
    """``config`` whose ``queue.queues`` (the queues a worker consumes besides its workers'
    own) also has every queue named in the ``QUEUES`` of a ``TASKS`` alias whose backend is
    ours: a task may be sent to any of them with ``using(queue_name=...)``."""
    from django.conf import settings

    if config.queue is None:
        return config
    named: list[str] = []
    for params in (getattr(settings, "TASKS", None) or {}).values():
        if isinstance(params, Mapping) and params.get("BACKEND") in _OUR_BACKENDS:
            named += [q for q in params.get("QUEUES") or () if isinstance(q, str)]
    if not named:
        return config
    queues = tuple(dict.fromkeys([*(config.queue.queues or ()), *named]))
    return config.model_copy(update={"queue": config.queue.model_copy(update={"queues": queues})})


_OUR_BACKENDS = ("unified_jobs.django.TasksBackend", "unified_jobs.django.backend.TasksBackend")


def register_workers_of(jobs: Jobs, module: ModuleType) -> list[type[Worker[Any]]]:
    """Register each concrete ``Worker`` subclass defined in ``module`` (not imported into it)."""
    from unified_jobs.django.tasks import DjangoTaskWorker

    found = []
    for value in vars(module).values():
        if not (inspect.isclass(value) and issubclass(value, Worker) and value.__module__ == module.__name__):
            continue
        if issubclass(value, DjangoTaskWorker) or inspect.isabstract(value):
            continue
        if getattr(value, "args_model", None) is None or value.perform is Worker.perform:
            continue  # a generic base of the module's workers
        jobs.register(value)
        found.append(value)
    return found


def _setup_django() -> None:
    """``django.setup()`` when the command line (not manage.py) loads the app."""
    from django.apps import apps

    if apps.models_ready:  # set up (or in an app's ready(), which may load models)
        return
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        from django.conf import settings

        if not settings.configured:
            raise ImproperlyConfigured(
                "unified_jobs.django:get_jobs needs the Django settings: set DJANGO_SETTINGS_MODULE "
                "(e.g. DJANGO_SETTINGS_MODULE=mysite.settings), or run `manage.py unified_jobs ...`"
            )
    import django

    django.setup()
