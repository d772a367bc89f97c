"""``unified-jobs doctor``, run as a user runs it: the real command in a subprocess, from a project
folder holding a small app module and its config, against real Redis, Postgres and SQLite."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import PG_HOST, PG_PORT, REDIS_HOST, REDIS_PORT, redis_url, require_service
from tests.procs import BIN
from unified_jobs.adapters.sql import SCHEMA_VERSION

APP = """
    from pathlib import Path

    from pydantic import BaseModel

    from unified_jobs import Jobs, Worker


    class ReportArgs(BaseModel):
        user_id: int


    jobs = Jobs.from_config(config_dir=Path(__file__).parent / "config")


    @jobs.register
    class ReportWorker(Worker[ReportArgs]):
        queue = "reports"
        tags = ("reports", "daily")

        def perform(self, args: ReportArgs) -> None: ...


    @jobs.register
    class MailWorker(Worker[ReportArgs]):
        queue = "mail"
        tags = ("mail",)

        async def perform(self, args: ReportArgs) -> None: ...
"""

SECRET = "s3cret-Pa55"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project folder: ``doctor_app.py`` (two workers with tags) and ``config/``."""
    (tmp_path / "doctor_app.py").write_text(textwrap.dedent(APP))
    (tmp_path / "config").mkdir()
    return tmp_path


def write_config(project: Path, text: str, env: str = "development") -> None:
    (project / "config" / f"{env}.yaml").write_text(textwrap.dedent(text))


def queue_config(kind: str, uri: str) -> str:
    return f"""
        workers:
          mode: BackgroundQueue
        queue:
          kind: {kind}
          uri: '{uri}'
    """


def doctor(
    project: Path, *args: str, app: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``unified-jobs [--app doctor_app:jobs] doctor ARGS`` in the project folder."""
    user_env = {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("UNIFIED_JOBS_")
    }
    argv = [str(BIN / "unified-jobs"), *(["--app", "doctor_app:jobs"] if app else []), "doctor", *args]
    return subprocess.run(
        argv, cwd=project, env={**user_env, **(env or {})}, capture_output=True, text=True, timeout=60
    )


def line(output: str, start: str) -> str:
    """The one line of ``output`` that starts with ``start``."""
    found = [ln for ln in output.splitlines() if ln.startswith(start)]
    assert len(found) == 1, f"expected one line starting {start!r} in:\n{output}"
    return found[0]


def free_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_lists_the_workers(output: str) -> None:
    assert "ok    workers:  2 registered" in output
    assert re.search(r"^\s+doctor_app\.MailWorker\s+mail\s+mail\s+async$", output, re.MULTILINE), output
    assert re.search(r"^\s+doctor_app\.ReportWorker\s+reports\s+reports, daily\s+sync$", output, re.MULTILINE)


def test_good_redis_config(project: Path) -> None:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    write_config(project, queue_config("Redis", redis_url("cli")))
    result = doctor(project)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert line(out, "      env:") == "      env:      development (the default)"
    assert line(out, "      mode:") == "      mode:     BackgroundQueue"
    assert line(out, "      queue:") == f"      queue:    Redis at {redis_url('cli')}"
    assert line(out, "ok    queue:").startswith(f"ok    queue:    Redis at {redis_url('cli')} answered PING")
    assert_lists_the_workers(out)
    assert "FAIL" not in out
    assert out.rstrip().endswith("doctor: every check passed")


def test_wrong_key_names_the_file_and_the_key(project: Path) -> None:
    write_config(project, "workers:\n  mode: BackgroundAsync\n  concurency: 4\n")
    result = doctor(project)
    assert result.returncode == 1
    fail = line(result.stdout, "FAIL  config:")
    assert str(project / "config" / "development.yaml") in fail
    assert "workers.concurency: unknown key; accepted keys here: mode, concurrency" in result.stdout
    assert "doctor found 1 problem (config)" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_redis_down_is_a_clear_line_with_the_password_masked(project: Path) -> None:
    port = free_port()
    write_config(project, queue_config("Redis", f"redis://:{SECRET}@127.0.0.1:{port}/10"))
    result = doctor(project, "--timeout", "1")
    assert result.returncode == 1
    fail = line(result.stdout, "FAIL  queue:")
    assert f"Redis at redis://:***@127.0.0.1:{port}/10 did not answer" in fail
    assert "Connection refused" in fail
    assert "is it running and reachable?" in fail
    assert SECRET not in result.stdout + result.stderr
    assert_lists_the_workers(result.stdout)  # the other checks still ran
    assert "doctor found 1 problem (queue)" in result.stdout


def test_unreachable_postgres_is_a_clear_line(project: Path) -> None:
    port = free_port()
    write_config(project, queue_config("Postgres", f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/test"))
    result = doctor(project)
    assert result.returncode == 1
    fail = line(result.stdout, "FAIL  queue:")
    assert f"cannot connect to Postgres at postgresql://postgres:***@127.0.0.1:{port}/test" in fail
    assert "Connection refused" in fail
    assert SECRET not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_sqlite_schema_is_checked_and_created_with_fix(project: Path) -> None:
    db = project / "var" / "jobs.db"
    write_config(project, queue_config("Sqlite", f"sqlite:///{db}"))

    result = doctor(project)
    assert result.returncode == 0, result.stdout + result.stderr  # a new file is no problem
    ok = line(result.stdout, "ok    queue:")
    assert f"the SQLite file {db} does not exist yet; it is created with the queue's tables" in ok
    assert "on first use (or now, with `unified-jobs doctor --fix`)" in ok
    assert "FAIL" not in result.stdout
    assert not db.exists()  # checking creates nothing

    result = doctor(project, env={"UNIFIED_JOBS_DOCTOR_FIX": "1"})  # = --fix
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"created it (schema version {SCHEMA_VERSION})" in line(result.stdout, "ok    schema:")
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "unified_jobs_jobs" in tables

    result = doctor(project)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = f"table unified_jobs_jobs is at schema version {SCHEMA_VERSION}"
    assert expected in line(result.stdout, "ok    schema:")
    assert_lists_the_workers(result.stdout)


def test_sqlite_file_that_cannot_be_created_fails(project: Path) -> None:
    blocker = project / "not-a-folder"
    blocker.write_text("a file where the queue's folder should be\n")
    write_config(project, queue_config("Sqlite", f"sqlite:///{blocker}/var/jobs.db"))
    result = doctor(project)
    assert result.returncode == 1
    fail = line(result.stdout, "FAIL  queue:")
    assert f"the SQLite file {blocker}/var/jobs.db cannot be created: {blocker} is a file" in fail


def test_good_postgres_config(project: Path) -> None:
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    write_config(project, queue_config("Postgres", f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"))
    result = doctor(project, "--fix")  # the tables may exist already (other tests): either is ok
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "ok    queue:    connected to Postgres at postgresql://postgres@127.0.0.1:5432/test" in result.stdout
    )
    assert line(result.stdout, "ok    schema:")
    assert_lists_the_workers(result.stdout)

    result = doctor(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is at schema version" in line(result.stdout, "ok    schema:")


def test_without_an_app_the_config_alone_is_checked(project: Path) -> None:
    write_config(project, "workers:\n  mode: ForegroundBlocking\n", env="ci")
    result = doctor(project, app=False, env={"UNIFIED_JOBS_ENV": "ci"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert line(result.stdout, "warn  app:").startswith("warn  app:      no app given")
    assert line(result.stdout, "      env:") == "      env:      ci (from --env or UNIFIED_JOBS_ENV)"
    assert line(result.stdout, "ok    config:") == "ok    config:   config/ci.yaml is valid"
    assert line(result.stdout, "      mode:") == "      mode:     ForegroundBlocking"


def test_an_app_that_fails_to_import_is_reported_and_the_config_still_checked(project: Path) -> None:
    (project / "doctor_app.py").write_text("import no_such_dependency\n")
    write_config(project, "workers:\n  mode: BackgroundAsync\n")
    result = doctor(project)
    assert result.returncode == 1
    fail = line(result.stdout, "FAIL  app:")
    assert "cannot load doctor_app:jobs: ModuleNotFoundError: No module named 'no_such_dependency'" in fail
    assert line(result.stdout, "ok    config:") == "ok    config:   config/development.yaml is valid"
    assert "Traceback" not in result.stdout + result.stderr
