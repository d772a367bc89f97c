"""The Django example (examples/djangoshop) as its users run it: its tests with Django's own
runner and with pytest-django, and the demo `make demo` runs (a real worker on its SQLite queue,
in the project's database)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.procs import ROOT

try:
    import unified_jobs.django.compat  # noqa: F401
except ImportError:  # pragma: no cover - the dev extra installs Django and the backport
    if IN_CI:
        raise
    pytest.skip("needs Django and django-tasks (pip install -e '.[dev]')", allow_module_level=True)

EXAMPLE = ROOT / "examples" / "djangoshop"


def run(tmp_path: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DJANGOSHOP_DATA": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, *argv], cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr[-6000:]}"
    return done


def test_its_tests_pass_with_djangos_runner(tmp_path: Path) -> None:
    done = run(tmp_path, "manage.py", "test", "-v", "2")
    assert "test_an_order_gets_its_receipt" in done.stderr
    assert "Ran 2 tests" in done.stderr and "OK" in done.stderr


def test_its_tests_pass_with_pytest_django(tmp_path: Path) -> None:
    done = run(tmp_path, "-m", "pytest", "-q", "-p", "no:cacheprovider")
    assert "2 passed" in done.stdout


def test_the_demo_sends_every_receipt_on_a_real_worker(tmp_path: Path) -> None:
    done = run(tmp_path, "-m", "djangoshop.demo")
    assert "20/20" in done.stdout
    assert "never existed" in done.stdout  # the cancelled order's job
