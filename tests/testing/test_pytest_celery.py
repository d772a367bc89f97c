"""pytest-celery installed beside us: a user's suite mixes our fixtures with Celery's in-process ones.

pytest-celery 1.x registers the pytest plugin ``celery`` (``pytest_celery.plugin``). It re-exports
``celery.contrib.pytest``'s fixtures and then replaces ``celery_worker`` with its own, which is
parametrized over Docker containers; loading it also imports the Docker SDK (through
pytest-docker-tools), though nothing talks to Docker until one of its fixtures is used. The
recipe of docs/guides/testing.md turns it off (``-p no:celery``), loads Celery's in-process
fixtures (``pytest_plugins = ["celery.contrib.pytest"]``) and points them at ``jobs.celery``.

Each test runs a small project's suite in a pytest subprocess, as the user's own ``pytest``
would, with ``DOCKER_HOST`` pointing nowhere: anything that reached for Docker would fail.
"""

from __future__ import annotations

from importlib import metadata

import pytest

pytestmark = pytest.mark.timeout(120)

# A project in BackgroundQueue mode on a SQLite queue (a file in the test's folder: no service).
APP = """
    from pydantic import BaseModel
    from unified_jobs import Jobs, Worker

    jobs = Jobs.from_config(env="test")
    DONE = []

    class GreetArgs(BaseModel):
        name: str

    @jobs.register
    class Greet(Worker[GreetArgs]):
        def perform(self, args):
            DONE.append(("greet", args.name))

    @jobs.celery.task
    def add(x, y):
        DONE.append(("add", x + y))
        return x + y
"""

CONFIG = """
workers:
  mode: BackgroundQueue
queue:
  kind: Sqlite
  uri: sqlite:///queue.db
"""

# The recipe, as docs/guides/testing.md shows it.
PYPROJECT = """
[tool.pytest.ini_options]
addopts = "-p no:celery"                  # pytest-celery 1.x: its celery_worker needs Docker
unified_jobs_app = "myapp:jobs"
"""

CONFTEST = """
import pytest
from myapp import jobs
from unified_jobs.testing import celery_worker_parameters_for

pytest_plugins = ["celery.contrib.pytest"]    # Celery's in-process fixtures

@pytest.fixture
def celery_app():
    return jobs.celery

@pytest.fixture(scope="session")
def celery_session_app():
    return jobs.celery

@pytest.fixture(scope="session")
def celery_worker_parameters():
    return celery_worker_parameters_for(jobs)
"""

USERS_TESTS = """
import sys

from celery.worker import WorkController

import myapp
from unified_jobs.testing import assert_enqueued, watch_jobs


def test_a_worker_job_and_a_plain_task_run_through_celery_worker(celery_app, celery_worker):
    assert celery_app is myapp.jobs.celery
    assert isinstance(celery_worker, WorkController)      # Celery's in-process worker
    with watch_jobs(myapp.jobs) as watcher:
        handle = myapp.Greet.perform_later({"name": "ada"})
        result = myapp.add.delay(2, 3)
        watcher.wait(handle)
        watcher.wait(result.id)
    assert sorted(myapp.DONE) == [("add", 5), ("greet", "ada")]


def test_our_inline_fixture(inline_jobs):
    doubled = []
    from pydantic import BaseModel
    from unified_jobs import Worker

    class Args(BaseModel):
        n: int

    @inline_jobs.register
    class Double(Worker[Args]):
        def perform(self, args):
            doubled.append(args.n * 2)

    Double.perform_later({"n": 21})
    assert doubled == [42]


def test_our_recorder_on_the_users_app(jobs_recorder):
    assert jobs_recorder.app is myapp.jobs
    myapp.Greet.perform_later({"name": "bob"})
    assert_enqueued(myapp.Greet, args={"name": "bob"})


def test_our_override_runs_the_users_app_inline(jobs_override):
    myapp.Greet.perform_later({"name": "cy"})
    assert ("greet", "cy") in myapp.DONE


def test_no_pytest_celery_and_no_docker(request):
    assert "pytest_celery" not in sys.modules
    plugins = request.config.pluginmanager
    assert plugins.has_plugin("unified_jobs") and plugins.has_plugin("celery.contrib.pytest")
"""

SESSION_TESTS = """
import myapp
from unified_jobs.testing import watch_jobs


def test_one(celery_session_worker):
    with watch_jobs(myapp.jobs) as watcher:
        watcher.wait(myapp.Greet.perform_later({"name": "one"}))


def test_two(celery_session_worker, jobs_recorder):
    # the recorder takes the app for this test; the session worker is still there after it
    myapp.Greet.perform_later({"name": "recorded"})
    assert [job.kwargs for job in jobs_recorder.enqueued_jobs()] == [{"name": "recorded"}]


def test_three(celery_session_worker):
    with watch_jobs(myapp.jobs) as watcher:
        watcher.wait(myapp.add.delay(1, 1).id)
    assert myapp.DONE == [("greet", "one"), ("add", 2)]
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    version = metadata.version("pytest-celery")
    assert version.startswith("1."), f"these tests are about pytest-celery 1.x, found {version}"
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.delenv("UNIFIED_JOBS_ENV", raising=False)
    monkeypatch.delenv("UNIFIED_JOBS_CONFIG_DIR", raising=False)
    pytester.makepyfile(myapp=APP)
    pytester.mkdir("config")
    (pytester.path / "config" / "test.yaml").write_text(CONFIG)
    pytester.makefile(".toml", pyproject=PYPROJECT)
    pytester.makeconftest(CONFTEST)
    return pytester


def test_celery_worker_runs_our_jobs_and_plain_tasks_beside_our_fixtures(project: pytest.Pytester) -> None:
    project.makepyfile(test_users=USERS_TESTS)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=5)
    assert "celery_setup_worker" not in result.stdout.str()  # pytest-celery's Docker worker


def test_celery_session_worker_with_our_fixtures(project: pytest.Pytester) -> None:
    project.makepyfile(test_session=SESSION_TESTS)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=3)


def test_without_the_recipe_celery_worker_is_pytest_celerys_docker_worker(project: pytest.Pytester) -> None:
    """Why the recipe turns pytest-celery off: its plugin's ``celery_worker`` wins over Celery's."""
    project.makefile(".toml", pyproject='[tool.pytest.ini_options]\nunified_jobs_app = "myapp:jobs"\n')
    project.makeconftest("")
    project.makepyfile(test_users="def test_x(celery_worker):\n    pass\n")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["test_users.py::test_x[[]celery_setup_worker[]]"])


def test_no_fixture_name_is_shared_with_celery_or_pytest_celery() -> None:
    import celery.contrib.pytest
    import pytest_celery

    from unified_jobs import pytest_plugin

    ours = set(pytest_plugin.__all__)
    assert ours, "the plugin exports its fixtures in __all__"
    assert ours.isdisjoint(dir(celery.contrib.pytest)), ours & set(dir(celery.contrib.pytest))
    assert ours.isdisjoint(dir(pytest_celery)), ours & set(dir(pytest_celery))
