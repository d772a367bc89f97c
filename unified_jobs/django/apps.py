"""The Django app (``INSTALLED_APPS = [..., "unified_jobs.django"]``): builds the project's
``Jobs`` app at startup (so a bad ``settings.UNIFIED_JOBS`` fails there, with its key named),
and provides ``manage.py unified_jobs``."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class UnifiedJobsConfig(AppConfig):
    name = "unified_jobs.django"
    label = "unified_jobs"
    verbose_name = "Background jobs (unified_jobs)"

    def ready(self) -> None:
        from django.core.signals import setting_changed

        from unified_jobs.django.app import get_jobs

        setting_changed.connect(_settings_changed, dispatch_uid="unified_jobs.django.settings")
        get_jobs()


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    from unified_jobs.django.app import CELERY_APP_SETTING, SETTING, get_jobs, reset

    if setting in (SETTING, CELERY_APP_SETTING):
        reset()
        # Built again at once, so that the Worker classes (whose perform_later goes to the app
        # they were registered with last) follow the new settings too.
        get_jobs()
