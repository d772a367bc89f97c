"""Real worker processes for integration and acceptance tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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
    """A redis-server of the test's own on a free port (nothing kept on disk), for tests that
    need a whole Redis (every database number of the shared one is taken)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(folder)]
        self.proc = WorkerProcess(argv, {}, folder / f"redis-{self.port}.log")
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
