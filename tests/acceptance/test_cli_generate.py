"""``unified-jobs generate worker``, run as a user runs it: the real command in a subprocess, in
a fresh project folder; then the generated test under pytest, and ruff and mypy on the code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import BIN, ROOT
from unified_jobs.cli.generate import worker_names

# This project's ruff rules (pyproject.toml), at ruff's default line length, as a user's might be.
RUFF_RULES = "E,F,W,I,B,UP,SIM,RUF"


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH into this repo, no UNIFIED_JOBS_*."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("UNIFIED_JOBS_")}
    return {**env, **extra}


def run(cwd: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=cwd, env=env or user_env(), capture_output=True, text=True, timeout=120
    )


def generate(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(cwd, str(BIN / "unified-jobs"), "generate", "worker", *args, env=env)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's project folder with three generated workers (and no app: none is needed)."""
    root = tmp_path_factory.mktemp("project")
    for name in ("report", "send-email", "HTTPReportWorker"):
        result = generate(root, name)
        assert result.returncode == 0, result.stderr
    return root


def test_generate_writes_the_worker_and_its_test_and_says_how_to_register_it(project: Path) -> None:
    assert (project / "workers" / "__init__.py").is_file()
    assert "class ReportWorker(Worker[ReportArgs]):" in (project / "workers" / "report.py").read_text()
    test_text = (project / "tests" / "workers" / "test_report.py").read_text()
    assert "from workers.report import ReportArgs, ReportWorker" in test_text
    # A lone tests/workers/__init__.py would shadow the workers package: not created.
    assert not (project / "tests" / "workers" / "__init__.py").exists()

    result = generate(project, "report", "--force")
    assert result.returncode == 0, result.stderr
    assert "    from workers.report import ReportWorker\n    jobs.register(ReportWorker)\n" in result.stdout


def test_the_generated_tests_pass_under_pytest(project: Path) -> None:
    result = run(project, sys.executable, "-m", "pytest", "-q", "tests/workers")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed" in result.stdout  # two tests per worker, inline and recorded


def test_the_generated_code_passes_ruff(project: Path) -> None:
    check = run(project, str(BIN / "ruff"), "check", "--select", RUFF_RULES, ".")
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = run(project, str(BIN / "ruff"), "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_the_generated_code_passes_mypy_strict(project: Path) -> None:
    # unified_jobs is installed in editable mode here, through an import hook mypy cannot
    # follow: MYPYPATH finds it, and --follow-imports=silent treats it as an installed
    # package (its own imports are not reported), as it is in a user's virtualenv.
    env = user_env(MYPYPATH=str(ROOT))
    result = run(
        project, str(BIN / "mypy"), "--strict", "--follow-imports=silent", "workers", "tests", env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found in 7 source files" in result.stdout


def test_refuses_to_overwrite_without_force_and_writes_nothing(tmp_path: Path) -> None:
    assert generate(tmp_path, "report").returncode == 0
    worker = tmp_path / "workers" / "report.py"
    test = tmp_path / "tests" / "workers" / "test_report.py"
    worker.write_text("# mine\n")
    test.unlink()

    result = generate(tmp_path, "ReportWorker")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: workers/report.py already exists; nothing was written (pass --force to overwrite)"
    )
    assert worker.read_text() == "# mine\n"
    assert not test.exists()  # not written either, though it was missing

    result = generate(tmp_path, "report", "--force")
    assert result.returncode == 0, result.stderr
    assert "class ReportWorker" in worker.read_text()
    assert test.is_file()


@pytest.mark.parametrize(
    ("name", "module", "class_name"),
    [
        ("report", "report", "ReportWorker"),
        ("ReportWorker", "report", "ReportWorker"),
        ("send-email", "send_email", "SendEmailWorker"),
        ("HTTPReport", "http_report", "HTTPReportWorker"),
    ],
)
def test_names_are_normalised(tmp_path: Path, name: str, module: str, class_name: str) -> None:
    result = generate(tmp_path, name)
    assert result.returncode == 0, result.stderr
    assert f"class {class_name}(Worker[" in (tmp_path / "workers" / f"{module}.py").read_text()
    assert (tmp_path / "tests" / "workers" / f"test_{module}.py").is_file()
    assert f"jobs.register({class_name})" in result.stdout


@pytest.mark.parametrize(
    ("name", "snake", "class_name", "args_name"),
    [
        ("report", "report", "ReportWorker", "ReportArgs"),
        ("report_worker", "report", "ReportWorker", "ReportArgs"),
        ("send_email", "send_email", "SendEmailWorker", "SendEmailArgs"),
        ("SendEmailWorker", "send_email", "SendEmailWorker", "SendEmailArgs"),
        ("S3Upload", "s3_upload", "S3UploadWorker", "S3UploadArgs"),
        ("nightly report", "nightly_report", "NightlyReportWorker", "NightlyReportArgs"),
    ],
)
def test_worker_names(name: str, snake: str, class_name: str, args_name: str) -> None:
    names = worker_names(name)
    assert (names.snake, names.class_name, names.args_name) == (snake, class_name, args_name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Worker", "has no word besides 'Worker'"),
        ("report.py", "has characters other than letters"),
        ("class", "not a valid Python module name"),
    ],
)
def test_bad_names_are_refused(tmp_path: Path, name: str, message: str) -> None:
    result = generate(tmp_path, name)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "workers").exists()


def test_folders_from_env_vars_and_a_tests_package(tmp_path: Path) -> None:
    """Options read UNIFIED_JOBS_GENERATE_WORKER_*; a broken app setting does not matter."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "__init__.py").write_text("")
    env = user_env(
        UNIFIED_JOBS_GENERATE_WORKER_WORKERS_DIR="shop/workers",
        UNIFIED_JOBS_GENERATE_WORKER_TESTS_DIR="tests/jobs",
        UNIFIED_JOBS_APP="no_such_module:jobs",
    )
    result = generate(tmp_path, "report", env=env)
    assert result.returncode == 0, result.stderr
    assert "from shop.workers.report import ReportWorker" in result.stdout
    assert (tmp_path / "shop" / "workers" / "report.py").is_file()
    # tests/ is a package here, so the new tests folder becomes one too.
    assert (tmp_path / "tests" / "jobs" / "__init__.py").is_file()

    tests = run(tmp_path, sys.executable, "-m", "pytest", "-q", "tests/jobs/test_report.py")
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout
