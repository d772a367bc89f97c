"""A queue server that accepts the connection and never answers (a "black hole": a thread that
accepts and never writes a byte), or one that stops answering on a connection already in use
(a proxy that freezes): ``perform_later`` and ``perform_all_later`` raise ``EnqueueError``
within the queue's ``connect_timeout``/``read_timeout``, naming the server (password masked)
and what to check, instead of blocking. ``unified-jobs jobs list`` says a server is down or
hung within 2 s. Real sockets, real clients and servers, nothing of the drivers mocked.

The bound of one enqueue is one timeout (a timed-out try is not retried) plus the publish
retries' pauses for the quick failures before it (0.6 s): per try, Redis waits the connect
and then the first answer (connect_timeout + read_timeout), py-amqp one timeout for the TCP
connect and the handshake (the longer of the two), libpq its connect_timeout (whole seconds,
at least 2). Each call runs in a thread and fails the test if it is still blocked well past
its bound (today's hang), so a failure takes seconds, not minutes.
"""

from __future__ import annotations

import math
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu.exceptions import OperationalError

from tests.conftest import drop_rabbitmq_vhost, make_rabbitmq_vhost, require_rabbitmq
from tests.contract.contract_app import Echo, create_app
from tests.procs import PrivateRedis, free_port
from tests.unit.cli_project import Project, Result
from unified_jobs import Jobs
from unified_jobs.errors import EnqueueError

pytestmark = pytest.mark.timeout(120)

#: Seconds the publish retries pause between quick failures (0 + 0.2 + 0.4), and slack for a
#: loaded machine.
RETRY_PAUSES = 0.6
MARGIN = 1.0
#: The defaults of queue.connect_timeout and queue.read_timeout, in seconds.
DEFAULT_CONNECT, DEFAULT_READ = 0.5, 5.0
#: Small ones, to see the bound follow the config (milliseconds, as in the config).
SMALL = {"connect_timeout": 300, "read_timeout": 500}
#: What every timeout's message says.
DID_NOT_ANSWER = "did not answer within queue.connect_timeout"


class BlackHole:
    """A TCP server on a free port of 127.0.0.1 that accepts connections, holds them open and
    never writes a byte."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        for conn in self.accepted:
            conn.close()


class FreezingProxy:
    """Forwards TCP connections to ``port`` until ``freeze()``; from then on it holds every
    connection open and forwards nothing more (a server that stopped answering)."""

    def __init__(self, port: int) -> None:
        self._target = ("127.0.0.1", port)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._frozen = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name="freezing-proxy", daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            pump = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            self._threads.append(pump)
            pump.start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([a, b], [], [], 0.05)
                if self._frozen.is_set():
                    continue
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
            except OSError:
                return

    def freeze(self) -> None:
        self._frozen.set()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


@pytest.fixture(scope="module")
def store_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """The RabbitMQ kind's job store (queue.store_uri), up, so that enqueueing reaches the broker."""
    server = PrivateRedis(tmp_path_factory.mktemp("store-redis"))
    yield server
    server.stop()


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Jobs]]:
    """``apps(queue_section)``: a BackgroundQueue app of the contract workers on that queue,
    shut down after the test."""
    made: list[Jobs] = []

    def make(queue: dict[str, Any]) -> Jobs:
        jobs = create_app({"workers": {"mode": "BackgroundQueue"}, "queue": queue}, str(tmp_path / "r.jsonl"))
        made.append(jobs)
        return jobs

    yield make
    for jobs in made:
        jobs.shutdown(wait=False)


def timed(call: Callable[[], object], bound: float) -> tuple[BaseException | None, float]:
    """Run ``call`` in a thread: (what it raised, or None; seconds it took). Fails the test if
    it is still blocked at twice its bound plus 5 s (the thread is left to the black hole's
    teardown, which closes its sockets)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            call()
        except BaseException as exc:
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=run, name="enqueue", daemon=True)
    thread.start()
    limit = 2 * bound + 5
    thread.join(limit)
    if thread.is_alive():
        pytest.fail(f"still blocked after {limit:.1f} s (the bound is {bound:.1f} s)")
    return outcome.get("error"), outcome["elapsed"]


def queue_for(kind: str, port: int, store_uri: str, **timeouts: int) -> tuple[dict[str, Any], str]:
    """A queue section on 127.0.0.1:``port`` with the password hunter2, and its URI masked."""
    if kind == "Redis":
        uri, masked = f"redis://:hunter2@127.0.0.1:{port}/0", f"redis://:***@127.0.0.1:{port}/0"
        return {"kind": kind, "uri": uri, **timeouts}, masked
    if kind == "Postgres":
        uri = f"postgresql://app:hunter2@127.0.0.1:{port}/jobs"
        return {"kind": kind, "uri": uri, **timeouts}, f"postgresql://app:***@127.0.0.1:{port}/jobs"
    uri, masked = f"amqp://guest:hunter2@127.0.0.1:{port}/", f"amqp://guest:***@127.0.0.1:{port}/"
    return {"kind": kind, "uri": uri, "store_uri": store_uri, **timeouts}, masked


def bound_for(
    kind: str, connect_ms: float = DEFAULT_CONNECT * 1000, read_ms: float = DEFAULT_READ * 1000
) -> float:
    """The most an enqueue may take on a hung ``kind`` server with these timeouts (seconds)."""
    connect, read = connect_ms / 1000, read_ms / 1000
    one_try = {
        "Redis": connect + read,  # the TCP connect, then the first answer (AUTH)
        "RabbitMQ": max(connect, read),  # py-amqp: one timeout for the connect and the handshake
        "Postgres": max(2, math.ceil(connect)),  # libpq: whole seconds, at least 2
    }[kind]
    return one_try + RETRY_PAUSES + MARGIN


def check_enqueue_error(error: BaseException | None, masked: str) -> str:
    assert isinstance(error, EnqueueError), f"expected EnqueueError, got {error!r}"
    message = str(error)
    assert masked in message, message
    assert "hunter2" not in message, message
    assert DID_NOT_ANSWER in message, message
    assert "Nothing was enqueued" in message, message
    return message


KINDS = ["Redis", "Postgres", "RabbitMQ"]


@pytest.mark.parametrize("kind", KINDS)
def test_perform_later_on_a_hung_server_is_an_enqueue_error_within_the_default_timeouts(
    kind: str, black_hole: BlackHole, store_redis: PrivateRedis, apps: Any
) -> None:
    queue, masked = queue_for(kind, black_hole.port, store_redis.url)
    apps(queue)
    bound = bound_for(kind)
    error, elapsed = timed(lambda: Echo.perform_later({"n": 1}), bound)
    message = check_enqueue_error(error, masked)
    assert f"on {kind} at {masked}" in message, message
    assert elapsed < bound, f"{kind}: {elapsed:.2f} s, the bound is {bound:.2f} s"
    assert black_hole.accepted, "the client never connected: the test proves nothing"


@pytest.mark.parametrize("kind", KINDS)
def test_perform_all_later_on_a_hung_server_is_an_enqueue_error_within_the_default_timeouts(
    kind: str, black_hole: BlackHole, store_redis: PrivateRedis, apps: Any
) -> None:
    queue, masked = queue_for(kind, black_hole.port, store_redis.url)
    apps(queue)
    bound = bound_for(kind)
    error, elapsed = timed(lambda: Echo.perform_all_later([{"n": n} for n in range(5)]), bound)
    message = check_enqueue_error(error, masked)
    assert "could not enqueue 5 jobs" in message, message
    assert elapsed < bound, f"{kind}: {elapsed:.2f} s, the bound is {bound:.2f} s"


@pytest.mark.parametrize("kind", KINDS)
def test_the_bound_follows_the_configured_timeouts(
    kind: str, black_hole: BlackHole, store_redis: PrivateRedis, apps: Any
) -> None:
    queue, masked = queue_for(kind, black_hole.port, store_redis.url, **SMALL)
    apps(queue)
    bound = bound_for(kind, SMALL["connect_timeout"], SMALL["read_timeout"])
    for enqueue in (
        lambda: Echo.perform_later({"n": 1}),
        lambda: Echo.perform_all_later([{"n": 1}, {"n": 2}]),
    ):
        error, elapsed = timed(enqueue, bound)
        message = check_enqueue_error(error, masked)
        assert "(300 ms" in message and "(500 ms)" in message, message
        assert elapsed < bound, f"{kind}: {elapsed:.2f} s, the bound is {bound:.2f} s"
    if kind != "Postgres":  # libpq waits whole seconds, at least 2: the default bound's already
        assert bound < DEFAULT_READ, "the small timeouts must bound it below the default ones"


def test_an_app_tasks_publish_to_a_hung_redis_is_bounded(black_hole: BlackHole, apps: Any) -> None:
    """Redis's perform_later stops at the job store (the broker's server too); the publish
    itself (kombu's transport: an adopted app's own task calls, a retry's republish) is bounded
    as well. Plain Celery raises kombu's OperationalError there."""
    queue, _ = queue_for("Redis", black_hole.port, "", **SMALL)
    jobs = apps(queue)
    bound = bound_for("Redis", SMALL["connect_timeout"], SMALL["read_timeout"])
    error, elapsed = timed(lambda: jobs.celery.send_task("contract.Echo", kwargs={"n": 1}), bound)
    assert isinstance(error, OperationalError), repr(error)
    assert "Timeout" in str(error), str(error)
    assert elapsed < bound, f"{elapsed:.2f} s, the bound is {bound:.2f} s"


def test_a_hung_job_store_of_the_rabbitmq_kind_is_named(black_hole: BlackHole, apps: Any) -> None:
    """The job store is written first; its error names it (queue.store_uri), not the broker."""
    store = f"redis://:hunter2@127.0.0.1:{black_hole.port}/0"
    queue = {"kind": "RabbitMQ", "uri": f"amqp://guest:guest@127.0.0.1:{free_port()}/", "store_uri": store}
    apps({**queue, **SMALL})
    bound = bound_for("Redis", SMALL["connect_timeout"], SMALL["read_timeout"])
    error, elapsed = timed(lambda: Echo.perform_later({"n": 1}), bound)
    masked = f"redis://:***@127.0.0.1:{black_hole.port}/0"
    message = check_enqueue_error(error, masked)
    assert f"on the job store (queue.store_uri) of the RabbitMQ queue at {masked}" in message, message
    assert elapsed < bound, f"{elapsed:.2f} s, the bound is {bound:.2f} s"


@pytest.mark.parametrize("kind", ["Redis", "RabbitMQ"])
def test_a_server_that_stops_answering_on_a_connection_in_use(
    kind: str, store_redis: PrivateRedis, tmp_path: Path, apps: Any
) -> None:
    """The connection was set up and used; then the server stops answering (the proxy freezes):
    the next enqueue waits read_timeout once (RabbitMQ: for the publish's confirm)."""
    timeouts = {"connect_timeout": 300, "read_timeout": 1000}
    vhost_uri = None
    if kind == "Redis":
        server = PrivateRedis(tmp_path)
        proxy = FreezingProxy(server.port)
        queue = {"kind": "Redis", "uri": f"redis://127.0.0.1:{proxy.port}/0", **timeouts}
    else:
        require_rabbitmq()
        vhost_uri = make_rabbitmq_vhost("faults")
        proxy = FreezingProxy(5672)
        uri = vhost_uri.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
        queue = {"kind": "RabbitMQ", "uri": uri, "store_uri": store_redis.url, **timeouts}
    try:
        apps(queue)
        Echo.perform_later({"n": 0})  # the connections are set up, and work
        proxy.freeze()
        bound = 1.0 + RETRY_PAUSES + MARGIN
        error, elapsed = timed(lambda: Echo.perform_later({"n": 1}), bound)
        assert isinstance(error, EnqueueError), repr(error)
        assert DID_NOT_ANSWER in str(error) and "(1000 ms)" in str(error), str(error)
        assert elapsed < bound, f"{kind}: {elapsed:.2f} s, the bound is {bound:.2f} s"
    finally:
        proxy.close()
        if kind == "Redis":
            server.stop()
        elif vhost_uri is not None:
            drop_rabbitmq_vhost(vhost_uri)


def test_a_locked_sqlite_database_is_one_busy_timeout(tmp_path: Path, apps: Any) -> None:
    """SQLite has no server to hang; its like is another connection holding the write lock.
    An enqueue then waits the busy timeout (10 s) once, not once per publish retry."""
    database = tmp_path / "jobs.db"
    apps({"kind": "Sqlite", "uri": f"sqlite:///{database}"})
    Echo.perform_later({"n": 0})  # the tables exist
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        bound = 10.0 + RETRY_PAUSES + MARGIN
        error, elapsed = timed(lambda: Echo.perform_later({"n": 1}), bound)
    finally:
        holder.rollback()
        holder.close()
    assert isinstance(error, EnqueueError), repr(error)
    assert "database is locked" in str(error) and "busy timeout" in str(error), str(error)
    assert elapsed < bound, f"{elapsed:.2f} s, the bound is {bound:.2f} s"


# --- the command line -----------------------------------------------------------------------


def one_line(result: Result) -> str:
    assert result.code == 1, result
    assert "Traceback" not in result.err, result.err
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


@pytest.mark.parametrize("server", ["Redis down", "RabbitMQ down", "Redis hung"])
def test_jobs_list_says_the_server_is_down_or_hung_within_2_s(
    server: str, project: Project, black_hole: BlackHole
) -> None:
    port = free_port()
    if server == "Redis down":
        project.write(f"kind: Redis\nuri: 'redis://:s3cret@127.0.0.1:{port}/0'\n")
        expected = f"error: cannot reach the Redis server at redis://:***@127.0.0.1:{port}/0:"
    elif server == "RabbitMQ down":
        store = f"redis://127.0.0.1:{free_port()}/0"
        project.write(
            f"kind: RabbitMQ\nuri: 'amqp://guest:s3cret@127.0.0.1:{port}//'\nstore_uri: '{store}'\n"
        )
        expected = f"error: cannot reach the RabbitMQ broker at amqp://guest:***@127.0.0.1:{port}//:"
    else:
        port = black_hole.port
        uri = f"redis://:s3cret@127.0.0.1:{port}/0"
        project.write(f"kind: Redis\nuri: '{uri}'\nconnect_timeout: 300\nread_timeout: 500\n")
        expected = f"error: the Redis server at redis://:***@127.0.0.1:{port}/0 did not answer in time:"
    results: list[Result] = []
    error, elapsed = timed(lambda: results.append(project.run("jobs", "list")), 2.0)
    assert error is None, repr(error)
    line = one_line(results[0])
    assert line.startswith(expected), line
    assert "s3cret" not in line, line
    assert elapsed < 2.0, f"{server}: {elapsed:.2f} s"
