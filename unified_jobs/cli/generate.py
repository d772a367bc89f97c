"""``unified-jobs generate worker NAME``: a worker module and its test, as Loco's generator.

The layout assumed is a project run from its root folder: ``workers/<name>.py`` is importable
as ``workers.<name>`` when the project root is on ``sys.path`` (``python -m pytest`` from the
root puts it there; so does ``pythonpath = ["."]`` under ``[tool.pytest.ini_options]``).
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

import click

from unified_jobs.cli import cli
from unified_jobs.errors import UnifiedJobsError

__all__ = ["WorkerNames", "generate", "worker_names"]

# Words of a name: acronyms ("HTTP" in "HTTPReport"), capitalised or lower-case words (digits
# stay with the word before them: "S3Upload", "report2pdf"), numbers.
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+[0-9]*|[A-Z]+[0-9]*|[0-9]+")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class WorkerNames:
    """The names derived from the ``NAME`` given to ``generate worker``."""

    #: The module (file) name, e.g. ``send_email``.
    snake: str
    #: The worker class, e.g. ``SendEmailWorker``.
    class_name: str
    #: The arguments model, e.g. ``SendEmailArgs``.
    args_name: str

    @property
    def class_snake(self) -> str:
        """The class name in snake case, e.g. ``send_email_worker`` (for test names)."""
        return f"{self.snake}_worker"


def worker_names(name: str) -> WorkerNames:
    """Normalise ``report``, ``ReportWorker``, ``report_worker`` or ``send-email``.

    A trailing ``Worker`` word is dropped, so it is never doubled: ``report`` and
    ``ReportWorker`` both give ``workers/report.py`` with class ``ReportWorker``.
    """
    if not re.fullmatch(r"[A-Za-z0-9_\- ]+", name.strip()):
        raise UnifiedJobsError(
            f"worker name {name!r} has characters other than letters, digits, '-' and '_'; "
            "try e.g. `generate worker send_email`"
        )
    words = _WORDS.findall(name)
    if words and words[-1].lower() == "worker":
        words = words[:-1]
    if not words:
        raise UnifiedJobsError(f"worker name {name!r} has no word besides 'Worker'; try e.g. `report`")
    snake = "_".join(w.lower() for w in words)
    camel = "".join(w[0].upper() + w[1:] for w in words)
    if not _IDENTIFIER.match(snake) or keyword.iskeyword(snake) or snake[0].isdigit():
        raise UnifiedJobsError(
            f"worker name {name!r} gives the module name {snake!r}, which is not a valid Python "
            "module name; start it with a letter"
        )
    return WorkerNames(snake=snake, class_name=f"{camel}Worker", args_name=f"{camel}Args")


@cli.group()
def generate() -> None:
    """Generate code: `generate worker NAME`."""


@generate.command("worker")
@click.argument("name")
@click.option(
    "--workers-dir",
    default="workers",
    show_default=True,
    show_envvar=True,
    metavar="DIR",
    help="Folder of the worker modules, relative to the project root (the current folder).",
)
@click.option(
    "--tests-dir",
    default="tests/workers",
    show_default=True,
    show_envvar=True,
    metavar="DIR",
    help="Folder of the generated test.",
)
@click.option("--force", is_flag=True, show_envvar=True, help="Overwrite existing files.")
def worker(name: str, workers_dir: str, tests_dir: str, force: bool) -> None:
    """Write a Worker subclass and its test.

    NAME is e.g. `report`, `ReportWorker` or `send-email`: each gives the module
    `<workers-dir>/<snake_name>.py` with the class `<CamelName>Worker` and its pydantic
    arguments model, and the test `<tests-dir>/test_<snake_name>.py`, which runs the worker
    inline (ForegroundBlocking) and recorded, and passes as generated. Existing files are
    left alone unless --force.

    Run it from the project root. The test imports the worker as `workers.<snake_name>`, so
    the project root must be on sys.path when the tests run: `python -m pytest` from the
    root does that (plain `pytest` needs `pythonpath = ["."]` under
    [tool.pytest.ini_options]). Missing `__init__.py` files are created: in the workers
    folder always, in the tests folder only when its parent folder is a package.
    """
    names = worker_names(name)
    root = Path.cwd()
    module = _module_path(workers_dir)
    workers_dir = str(_inside_project(root, workers_dir, "--workers-dir"))
    tests_dir = str(_inside_project(root, tests_dir, "--tests-dir"))
    worker_file = Path(workers_dir) / f"{names.snake}.py"
    test_file = Path(tests_dir) / f"test_{names.snake}.py"
    existing = [str(p) for p in (worker_file, test_file) if (root / p).exists()]
    if existing and not force:
        raise UnifiedJobsError(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "nothing was written (pass --force to overwrite)"
        )
    values = {
        "name": name,
        "module": f"{module}.{names.snake}",
        "snake": names.snake,
        "class_snake": names.class_snake,
        "class_name": names.class_name,
        "args_name": names.args_name,
    }
    created = _package_inits(root, Path(workers_dir), Path(tests_dir))
    for path, template in ((worker_file, WORKER_TEMPLATE), (test_file, TEST_TEMPLATE)):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(Template(template).substitute(values), encoding="utf-8")
        created.append(path)
    for path in created:
        click.echo(f"created {path}")
    click.echo(
        "\nRegister the worker with your app (e.g. next to `jobs = Jobs.from_config()`):\n\n"
        f"    from {module}.{names.snake} import {names.class_name}\n"
        f"    jobs.register({names.class_name})\n\n"
        f"Then run its test from the project root: python -m pytest {test_file}"
    )


def _inside_project(root: Path, folder: str, option: str) -> Path:
    """``folder`` relative to the project root ``root``; an error if it is (or leads, through
    ``..`` or a symlink) outside it, so that nothing is written elsewhere."""
    path = Path(folder)
    target = (root / path).resolve()
    try:
        relative = target.relative_to(root.resolve())
    except ValueError:
        where = "an absolute path" if path.is_absolute() else "a path"
        raise UnifiedJobsError(
            f"{option} {folder} is {where} outside the project folder ({root}), where generate "
            f"writes nothing; give a folder inside it, relative to it (e.g. {option} "
            f"{'tests/workers' if option == '--tests-dir' else 'workers'}); nothing was written"
        ) from None
    if path.is_absolute() or ".." in path.parts:
        return relative
    return path


def _module_path(workers_dir: str) -> str:
    """The dotted module of the workers folder: ``workers``, ``myapp.workers``; a leading
    ``src/`` (the src layout) is not part of it."""
    path = Path(workers_dir)
    if path.is_absolute():
        try:
            path = path.relative_to(Path.cwd())
        except ValueError:
            raise UnifiedJobsError(
                f"--workers-dir {workers_dir} is outside the current folder; run from the project root "
                "and give a folder inside it"
            ) from None
    parts = [p for p in path.parts if p not in ("", ".")]
    if parts and parts[0] == "src":
        parts = parts[1:]
    if not parts or not all(_IDENTIFIER.match(p) and not keyword.iskeyword(p) for p in parts):
        raise UnifiedJobsError(
            f"--workers-dir {workers_dir!r} must be a folder whose parts are Python names "
            "(e.g. workers or myapp/workers): the worker is imported from it"
        )
    return ".".join(parts)


def _package_inits(root: Path, workers_dir: Path, tests_dir: Path) -> list[Path]:
    """Create the ``__init__.py`` files the generated code needs; return the ones created.

    The workers folder must be a regular package: it then wins over a same-named folder
    without ``__init__.py`` elsewhere on sys.path (such as ``tests/workers``). The tests
    folder gets one only when its parent is a package: a lone ``tests/workers/__init__.py``
    would make pytest import it as a package named ``workers``, hiding the real one.
    """
    wanted = [workers_dir / "__init__.py"]
    if (root / tests_dir.parent / "__init__.py").is_file() and tests_dir.parent != Path("."):
        wanted.append(tests_dir / "__init__.py")
    created = []
    for init in wanted:
        if not (root / init).exists():
            (root / init).parent.mkdir(parents=True, exist_ok=True)
            (root / init).write_text("", encoding="utf-8")
            created.append(init)
    return created


#: The worker module; ``string.Template`` placeholders (``$name``).
WORKER_TEMPLATE = '''\
"""$class_name: a background job. TODO: say what it does.

Generated by `unified-jobs generate worker $name`.
Register it with your app:

    from $module import $class_name
    jobs.register($class_name)
"""

from __future__ import annotations

import logging

from pydantic import BaseModel
from unified_jobs import Worker

logger = logging.getLogger(__name__)


class $args_name(BaseModel):
    """The arguments of a $class_name job.

    Validated when the job is enqueued, and sent to the worker as JSON.
    """

    # TODO: the arguments your job needs (JSON-friendly types).
    user_id: int


class $class_name(Worker[$args_name]):
    """TODO: say what the job does."""

    queue = "default"
    # With tags = ("reports",), `unified-jobs start --worker --tag reports` runs it.

    def perform(self, args: $args_name) -> None:
        """Do the work; `self.ctx` is the context given to `Jobs(..., context=...)`."""
        # TODO: replace with the job's work (the generated test checks this log line).
        logger.info("%s done for user %s", type(self).__name__, args.user_id)
'''

#: The worker's test; ``string.Template`` placeholders (``$name``).
TEST_TEMPLATE = '''\
"""Tests of $class_name.

Generated by `unified-jobs generate worker $name`.
TODO: make them check what your job really does. Fixtures and helpers:
docs/guides/testing.md of unified_jobs.
"""

from __future__ import annotations

import logging

import pytest
from unified_jobs import Jobs
from unified_jobs.testing import JobRecorder, assert_enqueued, perform_enqueued_jobs

from $module import $args_name, $class_name


def test_${class_snake}_runs_inline(
    inline_jobs: Jobs, caplog: pytest.LogCaptureFixture
) -> None:
    """ForegroundBlocking: the job runs before perform_later returns."""
    inline_jobs.register($class_name)
    with caplog.at_level(logging.INFO):
        $class_name.perform_later($args_name(user_id=1))
    # TODO: assert on what your job does instead of its log line.
    assert "$class_name done for user 1" in caplog.messages


def test_${class_snake}_is_enqueued(
    jobs_recorder: JobRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Recorded: validated and serialized as for a real queue, then run on demand."""
    jobs_recorder.app.register($class_name)  # a no-op once your app registers it
    # TODO: call the code of yours that enqueues the job instead.
    $class_name.perform_later({"user_id": 2})
    assert_enqueued($class_name, args={"user_id": 2}, count=1)
    with caplog.at_level(logging.INFO):
        performed = perform_enqueued_jobs()
    assert [job.name for job in performed] == [$class_name.name]
    assert "$class_name done for user 2" in caplog.messages
'''
