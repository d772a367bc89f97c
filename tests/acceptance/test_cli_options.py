"""The command line as a user types it: group options before or after the subcommand, unknown
options named, ``--`` passing the rest to Celery, and ``UNIFIED_JOBS_CONFIG_DIR`` finding the
config from any working directory. Real commands in subprocesses, a real worker on a SQLite file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.procs import BIN, wait_until
from unified_jobs.cli import hoist_group_options

APP = """
    import json
    import os

    from pydantic import BaseModel

    from unified_jobs import Jobs, Worker


    class Args(BaseModel):
        n: int


    jobs = Jobs.from_config()  # config/ from $UNIFIED_JOBS_CONFIG_DIR, not the working directory


    @jobs.register
    class Note(Worker[Args]):
        def perform(self, args: Args) -> None:
            with open(os.environ["NOTES"], "a") as out:
                out.write(json.dumps({"n": args.n}) + "\\n")
"""


@pytest.fixture
def project(tmp_path: Path) -> dict[str, str]:
    """A project whose code and config are not in the working directory the commands run in."""
    code = tmp_path / "project"
    (code / "settings").mkdir(parents=True)
    (code / "opts_app.py").write_text(textwrap.dedent(APP), encoding="utf-8")
    (code / "settings" / "development.yaml").write_text(
        "workers:\n  mode: BackgroundQueue\n"
        f"queue:\n  kind: Sqlite\n  uri: sqlite:///{tmp_path / 'jobs.db'}\n",
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return {
        "cwd": str(elsewhere),
        "PYTHONPATH": str(code),
        "UNIFIED_JOBS_CONFIG_DIR": str(code / "settings"),
        "NOTES": str(tmp_path / "notes.jsonl"),
    }


def run(project: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in project.items() if k != "cwd"}
    return subprocess.run(
        [str(BIN / "unified-jobs"), *args],
        cwd=project["cwd"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hoisting_moves_only_the_group_options_before_dashdash() -> None:
    assert hoist_group_options(["start", "-w", "--app", "a:b", "-c", "2"]) == [
        "--app",
        "a:b",
        "start",
        "-w",
        "-c",
        "2",
    ]
    assert hoist_group_options(["jobs", "list", "--app=a:b", "-etest", "--debug"]) == [
        "--app=a:b",
        "-etest",
        "--debug",
        "jobs",
        "list",
    ]
    assert hoist_group_options(["start", "-w", "-A", "a:b", "--", "--app", "x", "--debug"]) == [
        "-A",
        "a:b",
        "start",
        "-w",
        "--",
        "--app",
        "x",
        "--debug",
    ]


@pytest.mark.parametrize("where", ["before", "after"])
def test_app_and_env_before_or_after_the_subcommand(project: dict[str, str], where: str) -> None:
    group = ["--app", "opts_app:jobs", "--env", "development"]
    args = [*group, "doctor"] if where == "before" else ["doctor", *group]
    result = run(project, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "opts_app:jobs loaded" in result.stdout
    assert "opts_app.Note" in result.stdout


def test_the_config_dir_comes_from_the_environment(project: dict[str, str]) -> None:
    result = run(project, "jobs", "list", "-A", "opts_app:jobs")
    assert result.returncode == 0, result.stdout + result.stderr
    without = run({**project, "UNIFIED_JOBS_CONFIG_DIR": ""}, "jobs", "list", "-A", "opts_app:jobs")
    assert without.returncode == 1
    assert "config/development.yaml: config file not found" in without.stderr


def test_an_unknown_option_is_an_error_naming_it(project: dict[str, str]) -> None:
    result = run(project, "start", "--worker", "--prefetch-multiplier", "1", "--app", "opts_app:jobs")
    assert result.returncode == 2
    assert "No such option '--prefetch-multiplier'" in result.stderr
    stray = run(project, "start", "--worker", "stray", "--app", "opts_app:jobs")
    assert stray.returncode == 2
    assert "unexpected argument 'stray'; options for `celery worker` go after `--`" in stray.stderr


def test_a_worker_started_with_app_after_the_subcommand_runs_jobs(project: dict[str, str]) -> None:
    enqueue = subprocess.run(
        [str(BIN / "python"), "-c", "from opts_app import jobs, Note, Args; Note.perform_later(Args(n=7))"],
        cwd=project["cwd"],
        env={**os.environ, **{k: v for k, v in project.items() if k != "cwd"}},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert enqueue.returncode == 0, enqueue.stderr
    env = {k: v for k, v in project.items() if k != "cwd"}
    worker = subprocess.Popen(
        [
            str(BIN / "unified-jobs"),
            "start",
            "--worker",
            "--app",
            "opts_app:jobs",
            "--concurrency",
            "1",
            "--pool",
            "solo",
            "--",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=project["cwd"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    notes = Path(project["NOTES"])
    try:
        ran = wait_until(lambda: notes.exists() and notes.read_text().strip() != "", timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=30)[0]
    assert ran, output
    assert [json.loads(line) for line in notes.read_text().splitlines()] == [{"n": 7}]
    assert "no app given" not in output
