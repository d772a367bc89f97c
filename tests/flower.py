"""Flower for tests: start ``celery -A APP flower`` on a free port, wait until it serves, read its
HTTP API, stop it.

Flower (and ``celery inspect``/``control``) take a Celery app, not a ``Jobs``: this module also
exposes ``tests.flower:contract_celery``, the Celery app of the contract app
(``tests.contract.contract_app``), built from ``UJ_CONTRACT_CONFIG``/``UJ_CONTRACT_RECORD``
on first use, so that ``celery -A tests.flower:contract_celery ...`` talks to the same queue
as a ``unified-jobs --app tests.contract.contract_app:app_from_env start --worker``::

    flower = start_flower(CONTRACT_CELERY, env, tmp_path / "flower.log")
    try:
        flower.wait_ready()
        workers = flower.get_json("/api/workers?refresh=1")
    finally:
        flower.stop()
"""

from __future__ import annotations

import functools
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.procs import BIN, WorkerProcess, free_port

__all__ = ["CONTRACT_CELERY", "Flower", "start_flower"]

#: ``celery -A`` target of the contract app's Celery app.
CONTRACT_CELERY = "tests.flower:contract_celery"


@functools.cache
def _contract_celery() -> Any:
    from tests.contract.contract_app import app_from_env

    return app_from_env().celery


def __getattr__(name: str) -> Any:
    # Lazy, so that importing this module (pytest does) needs no UJ_CONTRACT_CONFIG.
    if name == "contract_celery":
        return _contract_celery()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Flower:
    """A Flower process (``celery -A APP flower``) serving on 127.0.0.1:``port``."""

    def __init__(self, proc: WorkerProcess, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, timeout: float = 10.0) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            body: bytes = response.read()
            return body

    def get_json(self, path: str, timeout: float = 10.0) -> Any:
        return json.loads(self.get(path, timeout))

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``/healthcheck`` answers; fails with Flower's output if it exits or never does."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.proc.poll() is not None:
                code = self.proc.proc.returncode
                raise AssertionError(f"flower exited ({code}):\n{self.proc.output()[-4000:]}")
            try:
                if self.get("/healthcheck", timeout=2.0).strip() == b"OK":
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"flower not serving after {timeout} s:\n{self.proc.output()[-4000:]}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.proc.output()

    def stop(self) -> None:
        self.proc.stop(timeout=10.0)


def start_flower(app: str, env: dict[str, str], log: Path, *args: str, port: int | None = None) -> Flower:
    """Start Flower for the Celery app ``app`` (a ``celery -A`` target) with ``env`` (the app's
    configuration, e.g. ``UJ_CONTRACT_CONFIG``); ``args`` go to ``celery flower`` as they are.
    Its HTTP API is open (``FLOWER_UNAUTHENTICATED_API``; it listens on loopback only).
    Call ``wait_ready()`` before using it, and ``stop()`` at the end."""
    port = port or free_port()
    argv = [str(BIN / "celery"), "-A", app, "flower", f"--port={port}", "--address=127.0.0.1", *args]
    # Flower 2 serves its HTTP API only with authentication configured, or with this set.
    env = {"FLOWER_UNAUTHENTICATED_API": "true", **env}
    return Flower(WorkerProcess(argv, env, log), port)
