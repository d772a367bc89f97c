"""A queue server that is down, refuses the login or cannot be opened: every `jobs` command
and `doctor` print one line naming it (password masked) and what to check, and exit 1; no
traceback. "Down" is a free port on 127.0.0.1. Run in this process (``cli.main``)."""

from __future__ import annotations

import pytest

from tests.conftest import (
    RABBITMQ_HOST,
    RABBITMQ_PORT,
    REDIS_HOST,
    REDIS_PORT,
    redis_url,
    require_service,
)
from tests.procs import free_port
from tests.unit.cli_project import Project, Result
from unified_jobs.cli._faults import server_fault
from unified_jobs.config import QueueConfig


def one_line(result: Result) -> str:
    assert result.code == 1, result
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


@pytest.mark.parametrize("command", [("list",), ("failed",), ("show", "abc")])
def test_redis_down(project: Project, command: tuple[str, ...]) -> None:
    port = free_port()
    project.write(f"kind: Redis\nuri: 'redis://:s3cret@127.0.0.1:{port}/0'\n")
    line = one_line(project.run("jobs", *command))
    assert line.startswith(
        f"error: cannot reach the Redis server at redis://:***@127.0.0.1:{port}/0: Error 111 connecting"
    ), line
    assert line.endswith("check that it is running and that queue.uri has its host and port right")
    assert "s3cret" not in line


def test_postgres_down(project: Project) -> None:
    port = free_port()
    project.write(f"kind: Postgres\nuri: 'postgresql://app:s3cret@127.0.0.1:{port}/app'\n")
    for command in (("list",), ("tidy",), ("dump",), ("show", "abc")):
        line = one_line(project.run("jobs", *command))
        assert line.startswith(
            f"error: cannot reach the PostgreSQL server at postgresql://app:***@127.0.0.1:{port}/app:"
        )
        assert "Connection refused" in line and "s3cret" not in line, line


@pytest.mark.parametrize("what", ["missing folder", "not a database"])
def test_sqlite_file_that_cannot_be_opened(project: Project, what: str) -> None:
    if what == "missing folder":
        path, detail = project.path / "no" / "such" / "jobs.db", "unable to open database file"
        (project.path / "no").write_text("a file, so the folder cannot be made either")
    else:
        path, detail = project.path / "jobs.db", "file is not a database"
        path.write_text("this is not SQLite " * 100)
    project.write(f"kind: Sqlite\nuri: 'sqlite:///{path}'\n")
    line = one_line(project.run("jobs", "list"))
    assert line == (
        f"error: cannot open the SQLite database at sqlite:///{path}: {detail}; check that the "
        "file's folder exists and that this user may read and write the file and its folder (queue.uri)"
    )


def test_rabbitmq_job_store_down(project: Project) -> None:
    port = free_port()
    project.write(
        f"kind: RabbitMQ\nuri: 'amqp://guest:guest@127.0.0.1:{free_port()}//'\n"
        f"store_uri: 'redis://:s3cret@127.0.0.1:{port}/0'\n"
    )
    for command in (("failed",), ("show", "abc"), ("discard", "abc")):
        line = one_line(project.run("jobs", *command))
        assert line.startswith(
            f"error: cannot reach the Redis job store (queue.store_uri) at redis://:***@127.0.0.1:{port}/0:"
        ), line
        assert "queue.store_uri has its host and port right" in line


@pytest.mark.redis
def test_redis_refuses_the_login(project: Project) -> None:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    wrong = redis_url("jobscli").replace("redis://", "redis://nobody:wrong-pass@")
    project.write(f"kind: Redis\nuri: '{wrong}'\n")
    line = one_line(project.run("jobs", "failed"))
    masked = wrong.replace("wrong-pass", "***")
    assert line.startswith(f"error: the Redis server at {masked} refused the login: "), line
    assert "check the user name and password in queue.uri" in line


def test_rabbitmq_refuses_the_login(project: Project) -> None:
    require_service("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    project.write(
        f"kind: RabbitMQ\nuri: 'amqp://guest:wrong-pass@{RABBITMQ_HOST}:{RABBITMQ_PORT}//'\n"
        f"store_uri: '{redis_url('jobscli')}'\n"
    )
    line = one_line(project.run("jobs", "list"))
    assert line.startswith(
        f"error: the RabbitMQ broker at amqp://guest:***@{RABBITMQ_HOST}:{RABBITMQ_PORT}// refused the "
        "login: "
    ), line
    assert "ACCESS_REFUSED" in line and "wrong-pass" not in line


def test_a_bare_slash_in_the_password_is_named_and_no_piece_of_it_shows(project: Project) -> None:
    # Both the app and doctor printed a piece of it ('pa', the "port" redis-py could not read).
    project.write(f"kind: Redis\nuri: 'redis://:pa/ss@word@127.0.0.1:{free_port()}/0'\n")
    line = one_line(project.run("jobs", "list"))
    assert line.startswith(f"error: cannot load {project.module}:jobs: ValueError: Port could not be cast"), (
        line
    )
    assert "'pa'" not in line and "ss@word" not in line
    assert "the password in queue.uri has a bare '@' and '/'" in line and "%2F" in line

    doctor = project.run("doctor")
    assert doctor.code == 1
    assert "'pa'" not in doctor.out and "pa/ss" not in doctor.out and "ss@word" not in doctor.out
    assert "FAIL  queue:    not connecting to redis://:***@127.0.0.1:" in doctor.out


def test_postgres_password_with_a_bare_at_sign_is_never_printed(project: Project) -> None:
    # SQLAlchemy read "ss" as the host, and the error showed it: "failed to resolve host 'ss'".
    project.write("kind: Postgres\nuri: 'postgresql://app:p@ss/w@127.0.0.1:5432/app'\n")
    doctor = project.run("doctor")
    assert doctor.code == 1
    assert "postgresql://app:***@127.0.0.1:5432/app" in doctor.out
    assert "'ss'" not in doctor.out and "p@ss" not in doctor.out
    assert "***ostgres" not in doctor.out  # the short password used to be masked everywhere
    assert (
        "not connecting to postgresql://app:***@127.0.0.1:5432/app; the password in queue.uri" in doctor.out
    )


def test_a_config_error_showing_a_uri_is_masked(project: Project) -> None:
    project.write("kind: Redis\nuri: ['redis://:s3cret@127.0.0.1:6379/0']\n")
    result = project.run("jobs", "list")
    assert result.code == 1
    assert "(got ['redis://:***@127.0.0.1:6379/0'])" in result.err and "s3cret" not in result.err


def queue(kind: str, uri: str, store_uri: str | None = None) -> QueueConfig:
    return QueueConfig(kind=kind, uri=uri, store_uri=store_uri)  # type: ignore[arg-type]


def test_server_fault_tells_down_timeout_and_refusal_apart() -> None:
    rabbit = queue("RabbitMQ", "amqp://guest:pw@127.0.0.1:5672//", "redis://127.0.0.1:6379/0")
    down = server_fault(ConnectionRefusedError(111, "Connection refused"), rabbit)
    assert str(down) == (
        "cannot reach the RabbitMQ broker at amqp://guest:***@127.0.0.1:5672//: [Errno 111] Connection "
        "refused; check that it is running and that queue.uri has its host and port right"
    )
    slow = server_fault(TimeoutError("timed out"), queue("Redis", "redis://h:6379/0"))
    assert str(slow).startswith("the Redis server at redis://h:6379/0 did not answer in time: timed out;")
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise RuntimeError("something else") from exc
    except RuntimeError as wrapped:
        assert server_fault(wrapped, rabbit) is not None  # found in the causes
    assert server_fault(ValueError("a bug"), rabbit) is None  # not a server's: the traceback stays
    assert server_fault(KeyError("x"), queue("Postgres", "postgresql://h/db")) is None


def test_doctor_with_the_queue_down_prints_fail_lines_and_no_traceback(project: Project) -> None:
    project.write(f"kind: Postgres\nuri: 'postgresql://app:s3cret@127.0.0.1:{free_port()}/app'\n")
    doctor = project.run("doctor", "--timeout", "1")
    assert doctor.code == 1
    assert "Traceback" not in doctor.out + doctor.err
    assert "FAIL  queue:" in doctor.out and "s3cret" not in doctor.out


def test_doctor_says_a_wrong_redis_password_is_a_refused_login(project: Project) -> None:
    # It said "did not answer ...; is it running and reachable?" of a server that did answer.
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    wrong = redis_url("jobscli").replace("redis://", "redis://nobody:wrong-pass@")
    project.write(f"kind: Redis\nuri: '{wrong}'\n")
    doctor = project.run("doctor", "--timeout", "2")
    assert doctor.code == 1
    assert "refused the login" in doctor.out and "check the user name and password" in doctor.out
    assert "did not answer" not in doctor.out and "wrong-pass" not in doctor.out


def test_doctor_says_a_wrong_rabbitmq_password_is_a_refused_login(project: Project) -> None:
    require_service("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    project.write(
        f"kind: RabbitMQ\nuri: 'amqp://guest:wrong-pass@{RABBITMQ_HOST}:{RABBITMQ_PORT}//'\n"
        f"store_uri: '{redis_url('jobscli')}'\n"
    )
    doctor = project.run("doctor", "--timeout", "2")
    assert doctor.code == 1
    assert "refused the login" in doctor.out and "ACCESS_REFUSED" in doctor.out
    assert "wrong-pass" not in doctor.out
