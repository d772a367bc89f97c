"""Tests of the testing toolkit (``unified_jobs.testing`` and the pytest plugin).

pytest's own ``pytester`` fixture runs small test files as a user would. It is enabled
here through ``pytest_configure`` rather than ``pytest_plugins = ["pytester"]``: pytest
refuses ``pytest_plugins`` in a conftest below the rootdir when the whole suite runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from unified_jobs import Jobs
from unified_jobs.config import Config, WorkersConfig


def pytest_configure(config: pytest.Config) -> None:
    # Called for this conftest too when it is imported late, during collection.
    if not config.pluginmanager.has_plugin("pytester"):
        config.pluginmanager.import_plugin("pytester")
    # The plugin comes from the pytest11 entry point; load it by hand if autoload is off.
    if not (
        config.pluginmanager.has_plugin("unified_jobs")
        or config.pluginmanager.has_plugin("unified_jobs.pytest_plugin")
    ):
        config.pluginmanager.import_plugin("unified_jobs.pytest_plugin")


def make_app(mode: str = "ForegroundBlocking", context: object = None) -> Jobs:
    return Jobs(Config(workers=WorkersConfig(mode=mode)), context=context)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    from tests.testing import workers

    workers.CALLS.clear()


@pytest.fixture
def app() -> Iterator[Jobs]:
    """A fresh app (ForegroundBlocking) with the test workers registered."""
    from tests.testing import workers

    jobs = make_app(context={"name": "test-context"})
    for worker in workers.ALL:
        jobs.register(worker)
    yield jobs
    jobs.shutdown()
