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

    def stop(self, timeout: float = 20.0) -> int:
        """Warm shutdown (SIGTERM to the main process), then SIGKILL to the group if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
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
        for worker in self.started:
            worker.stop()


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
