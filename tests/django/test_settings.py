"""The Django integration's own rules, without a worker: settings errors name the setting,
Django's priorities map onto ours in order, and ``manage.py unified_jobs`` passes the command
line's arguments on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import IN_CI
from tests.procs import ROOT

try:
    from unified_jobs.django.backend import from_django_priority
    from unified_jobs.django.management.commands.unified_jobs import unified_jobs_argv
except ImportError:  # pragma: no cover - the dev extra installs Django and the backport
    if IN_CI:
        raise
    pytest.skip("needs Django and django-tasks (pip install -e '.[dev]')", allow_module_level=True)


def django_check(config: object) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.django.djproject.settings",
        "UJ_DJANGO_CONFIG": json.dumps(config),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "django", "check"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_setting_stops_django_naming_the_key() -> None:
    done = django_check({"workers": {"mode": "Nope", "concurrency": 0}})
    assert done.returncode != 0
    assert "settings.UNIFIED_JOBS: invalid configuration" in done.stderr
    assert "workers.mode" in done.stderr and "'ForegroundBlocking'" in done.stderr
    assert "workers.concurrency" in done.stderr
    assert "DjangoConfigError" in done.stderr  # an ImproperlyConfigured, as Django users expect


def test_a_missing_queue_section_is_explained() -> None:
    done = django_check({"workers": {"mode": "BackgroundQueue"}})
    assert done.returncode != 0
    assert "settings.UNIFIED_JOBS" in done.stderr and "no queue section" in done.stderr


def test_a_good_setting_passes_djangos_checks() -> None:
    done = django_check({"workers": {"mode": "ForegroundBlocking"}})
    assert done.returncode == 0, done.stderr
    assert "no issues" in done.stdout


def test_djangos_priorities_map_onto_ours_in_order() -> None:
    mapped = [from_django_priority(p) for p in range(-100, 101)]
    assert (mapped[0], mapped[100], mapped[200]) == (0, 5, 9)  # -100, 0 (the default), 100
    assert mapped == sorted(mapped)  # higher stays higher (or equal)
    assert set(mapped) == set(range(10))  # every level is used


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["worker", "--concurrency", "2"], ["start", "--worker", "--concurrency", "2"]),
        (["scheduler"], ["start", "--scheduler"]),
        (["jobs", "failed", "--settings", "x.settings", "-v", "2"], ["jobs", "failed"]),
        (["doctor", "--traceback", "--workers"], ["doctor", "--workers"]),
        (["worker", "--", "--settings", "celery's"], ["start", "--worker", "--", "--settings", "celery's"]),
    ],
)
def test_manage_py_passes_the_command_line_on(given: list[str], expected: list[str]) -> None:
    assert unified_jobs_argv(given) == ["--app", "unified_jobs.django:get_jobs", *expected]
