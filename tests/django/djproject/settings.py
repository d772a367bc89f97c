"""Settings of the Django project the tests drive: ``UNIFIED_JOBS`` comes from the
``UJ_DJANGO_CONFIG`` environment variable (JSON), so a worker process started by a test runs
the config the test chose; the database from ``UJ_DJANGO_DB`` (JSON, a ``DATABASES`` entry)."""

import json
import os

SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "unified_jobs.django",
    "tests.django.orders",
]
MIDDLEWARE: list = []
ROOT_URLCONF = "tests.django.djproject.urls"
DATABASES = {
    "default": json.loads(
        os.environ.get("UJ_DJANGO_DB") or '{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}'
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
UNIFIED_JOBS = json.loads(os.environ.get("UJ_DJANGO_CONFIG") or '{"workers": {"mode": "ForegroundBlocking"}}')
TASKS = {
    "default": {
        "BACKEND": "unified_jobs.django.TasksBackend",
        "QUEUES": ["default", "mail", "reports"],  # no task defaults to reports
    }
}
