"""Real worker processes for integration and acceptance tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class WorkerProcess:
    """A ``unified-jobs start --worker`` (or any command) in its own process group."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._terminated = False
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for_output(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited ({self.proc.returncode}) before {text!r}:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {text!r} in worker output after {timeout}s:\n{self.output()[-4000:]}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and its children."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log_file.close()

    def terminate(self) -> None:
        """Start a warm shutdown (SIGTERM to the main process) without waiting for it."""
        if self.proc.poll() is None and not self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = 20.0) -> int:
        """Warm shutdown (SIGTERM to the main process), then SIGKILL to the group if it lingers."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log_file.close()
        return self.proc.returncode


def unified_jobs_worker(app: str, env: dict[str, str], log: Path, *args: str) -> WorkerProcess:
    argv = [str(BIN / "unified-jobs"), "--app", app, "start", "--worker", *args]
    return WorkerProcess(argv, env, log)


class WorkerPool:
    """The worker processes one test starts (``pool(env, *args)``), each logging to a file of
    ``folder``; ``stop_all`` stops them (a test's ``workers`` fixture calls it at the end)."""

    def __init__(self, app: str, folder: Path) -> None:
        self.app = app
        self.folder = folder
        self.started: list[WorkerProcess] = []

    def __call__(
        self, env: dict[str, str], *args: str, name: str = "worker", app: str | None = None
    ) -> WorkerProcess:
        log = self.folder / f"{name}-{len(self.started)}.log"
        worker = unified_jobs_worker(app or self.app, env, log, *args)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        stop_together(self.started)


def stop_together(processes: list[WorkerProcess]) -> None:
    """Stop them all at once (SIGTERM to each, then wait for each): warm shutdowns overlap."""
    for proc in processes:
        proc.terminate()
    for proc in processes:
        proc.stop()


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # Jobs append while this reads: a last line without its newline is still being written.
    complete = path.read_text(encoding="utf-8").split("\n")[:-1]
    return [json.loads(line) for line in complete if line.strip()]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, timeout: float = 30.0, proc: WorkerProcess | None = None) -> None:
    """Until ``url`` answers (any HTTP status), or fail with the process' log."""
    import urllib.error
    import urllib.request

    def answers() -> bool:
        if proc is not None and proc.proc.poll() is not None:
            code = proc.proc.returncode
            raise AssertionError(f"{url}: the server exited ({code}):\n{proc.output()[-4000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    if not wait_until(answers, timeout, 0.1):
        log = f":\n{proc.output()[-4000:]}" if proc is not None else ""
        raise AssertionError(f"{url} did not answer in {timeout}s{log}")


class PrivateRedis:
    """A redis-server of the test's own on a free port, for tests that need a whole Redis
    (every database number of the shared one is taken). Nothing is kept on disk, unless
    ``persist``: then every write goes to its append-only file first (``appendfsync always``),
    so that ``stop`` and ``start`` are a restart that keeps every job."""

    def __init__(self, folder: Path, persist: bool = False) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.folder = folder
        self.argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self.argv += ["--dir", str(folder)]
        self.argv += ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--appendonly", "no"]
        self.start()

    def start(self) -> None:
        self.proc = WorkerProcess(self.argv, {}, self.folder / f"redis-{self.port}.log")
        wait_until(self._up, 10, 0.05) or self._fail()

    def _up(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _fail(self) -> None:
        raise AssertionError(f"redis-server on port {self.port} did not start:\n{self.proc.output()}")

    def stop(self) -> None:
        self.proc.stop(10)


def _postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: ``UJ_PG_BINDIR``, the PATH, or Debian's newest
    /usr/lib/postgresql/<major>/bin."""
    import shutil

    if os.environ.get("UJ_PG_BINDIR"):
        return Path(os.environ["UJ_PG_BINDIR"])
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    majors = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return majors[-1].parent if majors else None


def postgres_bindir_or_reason() -> tuple[Path | None, str]:
    """PostgreSQL's server programs, or why a private cluster cannot be made here."""
    bindir = _postgres_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        return None, "no PostgreSQL server programs (initdb, pg_ctl): apt install postgresql"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root with no 'postgres' user to own a private cluster"
    return bindir, ""


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (``initdb`` in a temporary folder, a free port on
    127.0.0.1, trust auth, fsync off), for tests that stop, restart or kill the server. Never
    the shared server. As root, the cluster belongs to the ``postgres`` user (``initdb`` and
    the server refuse root)."""

    def __init__(self) -> None:
        import tempfile

        bindir, reason = postgres_bindir_or_reason()
        if bindir is None:
            raise RuntimeError(reason)
        self.bindir = bindir
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.folder = Path(tempfile.mkdtemp(prefix="uj-pg-"))
        self.data = self.folder / "data"
        self.logfile = self.folder / "server.log"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            import shutil

            self.folder.chmod(0o755)
            shutil.chown(self.folder, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, program: str, *args: str, timeout: float = 60) -> str:
        argv = [*self._as, str(self.bindir / program), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-3000:] if self.logfile.exists() else ""
            raise AssertionError(f"{program} {' '.join(args)} failed:\n{done.stdout}{done.stderr}\n{log}")
        return done.stdout

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        options += " -c full_page_writes=off -c max_connections=200"
        data, log = str(self.data), str(self.logfile)
        self._run("pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (connections cut, a clean shutdown) or ``immediate`` (as
        a crash: recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        argv = [*self._as, str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"]
        return subprocess.run(argv, capture_output=True).returncode == 0

    def destroy(self) -> None:
        import shutil

        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


def _rabbitmq_program(name: str) -> str | None:
    import shutil

    return shutil.which(name) or next((str(p) for p in [Path("/usr/sbin") / name] if p.exists()), None)


class PrivateRabbitMQ:
    """A RabbitMQ node of the test's own (its own node name, AMQP and distribution ports, data
    folder and configuration, no plugins), for tests that stop and restart the broker. Never
    the shared node. Its queues and persistent messages survive ``stop`` and ``start``. As
    root, ``rabbitmq-server`` runs as the ``rabbitmq`` user, who owns the folder."""

    def __init__(self) -> None:
        import tempfile

        server, ctl = _rabbitmq_program("rabbitmq-server"), _rabbitmq_program("rabbitmqctl")
        if server is None or ctl is None:
            raise RuntimeError("no rabbitmq-server and rabbitmqctl: apt install rabbitmq-server")
        self.server, self.ctl = server, ctl
        self.port, dist_port = free_port(), free_port()
        self.node = f"ujfault{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.folder = Path(tempfile.mkdtemp(prefix="uj-rabbit-"))
        (self.folder / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.folder / "enabled_plugins").write_text("[].\n")
        for sub in ("mnesia", "log"):
            (self.folder / sub).mkdir()
        if os.geteuid() == 0:
            import shutil

            self.folder.chmod(0o755)
            for path in [self.folder, *self.folder.rglob("*")]:
                shutil.chown(path, "rabbitmq", "rabbitmq")
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.folder / "pid"),
        }
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise

    def _run(self, *argv: str, timeout: float = 90) -> str:
        done = subprocess.run(
            argv, env=self.env, cwd=self.folder, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}\n{self.log()}")
        return done.stdout

    def log(self) -> str:
        path = self.folder / "log" / f"{self.node}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def _answers(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                return s.recv(4) == b"\x01\x00\x00\x00"  # Connection.Start: a method frame, channel 0
        except OSError:
            return False

    def start(self) -> None:
        self._run(self.server, "-detached")  # returns before the node is up
        if not wait_until(self._answers, 60, 0.1):
            raise AssertionError(f"RabbitMQ node {self.node} does not answer on {self.port}:\n{self.log()}")

    def stop(self) -> None:
        """A clean stop of the node (``rabbitmqctl stop``), waiting until its process is gone."""
        self._run(self.ctl, "-n", self.node, "stop", str(self.folder / "pid"))

    def destroy(self) -> None:
        """Stop the node if it runs (answering or not yet), and delete its folder."""
        import shutil

        pid = self.folder / "pid"
        if pid.exists():
            try:
                self.stop()
            except (AssertionError, subprocess.TimeoutExpired):
                with contextlib.suppress(ValueError, OSError):
                    os.kill(int(pid.read_text().strip()), signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)


#: The queue kinds a test's own queue can be (``own_queue``).
QUEUE_KINDS = ["Postgres", "Sqlite", "Redis", "RabbitMQ"]


@contextlib.contextmanager
def own_queue(kind: str, folder: Path, purpose: str) -> Iterator[dict[str, Any]]:
    """A ``queue:`` section of ``kind`` that no other test module shares: a table prefix of
    ``purpose`` (Postgres, emptied), a SQLite file in ``folder``, a Redis of the test's own,
    or a vhost of ``purpose`` with a Redis of its own as the job store (RabbitMQ). Skips (or
    fails under CI) where the server is missing; removes what it made at the end."""
    from tests.conftest import (
        PG_HOST,
        PG_PORT,
        PG_URL,
        clear_sql_jobs,
        drop_rabbitmq_vhost,
        make_rabbitmq_vhost,
        require_rabbitmq,
        require_service,
        sql_prefix,
    )

    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    if kind == "Postgres":
        require_service("PostgreSQL", PG_HOST, PG_PORT)
        prefix = sql_prefix(purpose)
        clear_sql_jobs(PG_URL, prefix)
        section: dict[str, Any] = {"kind": kind, "uri": PG_URL, "table_prefix": prefix}
    elif kind == "Sqlite":
        section = {"kind": kind, "uri": f"sqlite:///{folder / 'jobs.db'}"}
    elif kind == "Redis":
        redis = PrivateRedis(folder)
        section, cleanup = {"kind": kind, "uri": redis.url}, redis.stop
    else:
        require_rabbitmq()
        store = PrivateRedis(folder)
        uri = make_rabbitmq_vhost(purpose)
        section = {"kind": kind, "uri": uri, "store_uri": store.url}

        def cleanup() -> None:
            drop_rabbitmq_vhost(uri)
            store.stop()

    try:
        yield section
    finally:
        cleanup()
