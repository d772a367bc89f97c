"""pytest plugin: fixtures for testing jobs. Loaded by the ``pytest11`` entry point.

Fixtures:

- ``inline_jobs``: a fresh ``Jobs`` app in ForegroundBlocking mode (jobs run inline).
- ``jobs_recorder``: a ``JobRecorder`` recording your app (see below), or a fresh app when
  none is configured; the helpers of ``unified_jobs.testing`` act on it.
- ``jobs_override``: your app, switched for the test to ForegroundBlocking, or to the mode
  of ``@pytest.mark.unified_jobs_mode("Recording" | "BackgroundAsync" | "ForegroundBlocking")``.
- ``jobs_worker``: a real Celery worker in this process consuming your app's real queue
  (your app must be in BackgroundQueue mode); ``jobs_worker.wait(handle)`` waits for a job.
- ``unified_jobs_app``: your app, from the ini option ``unified_jobs_app = "pkg.module:jobs"``
  or ``--unified-jobs-app``; override this fixture in ``conftest.py`` to give it directly.
- ``unified_jobs_context``: the context of the fresh apps (default ``None``); override it.

No fixture name is shared with Celery's own fixtures (``celery.contrib.pytest``) or
pytest-celery's; using both in one suite is shown in docs/guides/testing.md.

Every fixture restores what it changed (the app's adapter, which app each worker class is
bound to) when the test ends, failed or not. Nothing is imported or configured until a
fixture is used, so projects that do not use the plugin are not affected.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast, get_args

import pytest

if TYPE_CHECKING:
    from unified_jobs.adapters.celery.testing import RunningWorker
    from unified_jobs.jobs import Jobs
    from unified_jobs.testing import JobRecorder

__all__ = [
    "inline_jobs",
    "jobs_override",
    "jobs_recorder",
    "jobs_worker",
    "unified_jobs_app",
    "unified_jobs_context",
]

_APP_OPTION = "unified_jobs_app"
_MARKER = "unified_jobs_mode"


def pytest_addoption(parser: pytest.Parser) -> None:
    help_text = (
        "your unified_jobs app as 'module:attribute', for the jobs_override and jobs_recorder fixtures"
    )
    parser.addini(_APP_OPTION, help=help_text, default="")
    group = parser.getgroup("unified_jobs")
    group.addoption(
        "--unified-jobs-app", dest=_APP_OPTION, default=None, metavar="MODULE:ATTR", help=help_text
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(mode): the mode jobs_override switches your app to: "
        "'ForegroundBlocking' (default), 'Recording' or 'BackgroundAsync'",
    )


@pytest.fixture
def unified_jobs_app(request: pytest.FixtureRequest) -> Jobs | None:
    """Your app, from ``--unified-jobs-app`` or the ini option ``unified_jobs_app``; ``None``
    if neither is set. Override the fixture to return your app directly."""
    spec = request.config.getoption(_APP_OPTION) or request.config.getini(_APP_OPTION)
    if not spec:
        return None
    return _load_app(str(spec))


@pytest.fixture
def unified_jobs_context() -> Any:
    """The context (``self.ctx``) of the fresh apps made by ``inline_jobs`` and ``jobs_recorder``."""
    return None


@pytest.fixture
def inline_jobs(unified_jobs_context: Any) -> Iterator[Jobs]:
    """A fresh ``Jobs`` app in ForegroundBlocking mode; register the workers under test with it."""
    from unified_jobs.testing import _new_app, _preserved_worker_bindings

    app = _new_app(unified_jobs_context)
    with _preserved_worker_bindings(throwaway=[app]):
        try:
            yield app
        finally:
            app.shutdown()


@pytest.fixture
def jobs_recorder(unified_jobs_app: Jobs | None, unified_jobs_context: Any) -> Iterator[JobRecorder]:
    """Records what your app enqueues (a fresh app's, ``jobs_recorder.app``, when none is
    configured). The module-level helpers of ``unified_jobs.testing`` use this recorder."""
    from unified_jobs.testing import JobRecorder, _new_app, _preserved_worker_bindings

    app = unified_jobs_app if unified_jobs_app is not None else _new_app(unified_jobs_context)
    throwaway = [] if app is unified_jobs_app else [app]
    try:
        with _preserved_worker_bindings(throwaway=throwaway), JobRecorder(app) as recorder:
            yield recorder
    finally:
        if throwaway:
            app.shutdown()


@pytest.fixture
def jobs_override(request: pytest.FixtureRequest, unified_jobs_app: Jobs | None) -> Iterator[Jobs]:
    """Your app in ForegroundBlocking mode, or the mode of ``@pytest.mark.unified_jobs_mode``,
    for this test; its own adapter is restored after."""
    from unified_jobs.testing import OverrideMode, _preserved_worker_bindings, override_mode

    if unified_jobs_app is None:
        pytest.fail(
            "jobs_override needs your app: set the ini option unified_jobs_app = 'pkg.module:jobs' "
            "(e.g. under [tool.pytest.ini_options]), pass --unified-jobs-app, or override the "
            "unified_jobs_app fixture in conftest.py",
            pytrace=False,
        )
    marker = request.node.get_closest_marker(_MARKER)
    mode = marker.args[0] if marker is not None and marker.args else "ForegroundBlocking"
    if mode not in get_args(OverrideMode):
        pytest.fail(
            f"@pytest.mark.{_MARKER}({mode!r}): the mode must be one of {', '.join(get_args(OverrideMode))}",
            pytrace=False,
        )
    with _preserved_worker_bindings(), override_mode(unified_jobs_app, cast(OverrideMode, mode)):
        yield unified_jobs_app


@pytest.fixture
def jobs_worker(unified_jobs_app: Jobs | None) -> Iterator[RunningWorker]:
    """A real Celery worker (solo pool, in this process) consuming your app's real queue.

    Your app must be in BackgroundQueue mode for the test (e.g. a ``config/test.yaml`` pointing
    at a test Redis database). ``jobs_worker.wait(handle)`` waits for the job and raises if it
    failed in the worker.
    """
    from unified_jobs.testing import run_worker

    if unified_jobs_app is None:
        pytest.fail(
            "jobs_worker needs your app: set the ini option unified_jobs_app = 'pkg.module:jobs', "
            "pass --unified-jobs-app, or override the unified_jobs_app fixture in conftest.py",
            pytrace=False,
        )
    with run_worker(unified_jobs_app) as worker:
        yield worker


def _load_app(spec: str) -> Jobs:
    from unified_jobs.cli._app import AppNotFoundError, load_app

    try:
        return load_app(spec, what="unified_jobs_app")
    except AppNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
