"""Settings of the Django example: Django's Tasks on unified_jobs, configured here (no YAML).

The queue is SQLite, in the project's own database file, so an order and the job that sends
its receipt are written in one transaction. ``DJANGOSHOP_DATA`` says where the file lives
(default ``var/`` beside manage.py); ``DJANGOSHOP_MODE`` switches ``workers.mode``.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DJANGOSHOP_DATA") or BASE_DIR / "var")
DATA.mkdir(parents=True, exist_ok=True)

SECRET_KEY = "django-insecure-example-only"
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "unified_jobs.django",  # manage.py unified_jobs ...; the app's jobs.py is found
    "orders",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "djangoshop.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATA / "djangoshop.sqlite3"}}

# Django's Tasks framework: every @task goes through unified_jobs.
TASKS = {
    "default": {
        "BACKEND": "unified_jobs.django.TasksBackend",
        "QUEUES": ["default", "mail"],
    }
}

# unified_jobs' config: the same keys as a config file (docs/reference/configuration.md).
UNIFIED_JOBS = {
    "workers": {"mode": os.environ.get("DJANGOSHOP_MODE", "BackgroundQueue"), "concurrency": 2},
    "queue": {"kind": "Sqlite", "uri": f"sqlite:///{DATA / 'djangoshop.sqlite3'}"},
}
