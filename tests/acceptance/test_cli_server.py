"""`unified-jobs start --server-and-worker`: the example shop's web app and its jobs in one process."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REDIS_HOST, REDIS_PORT, flush_redis_db, redis_url, require_service
from tests.procs import BIN, ROOT, WorkerProcess, wait_until

pytestmark = pytest.mark.timeout(90)

EXAMPLES = ROOT / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def start_server(tmp_path: Path, env: dict[str, str]) -> tuple[WorkerProcess, str]:
    port = free_port()
    argv = [
        str(BIN / "unified-jobs"),
        "--app",
        "shop.web:jobs",
        "start",
        "--server-and-worker",
        "--server",
        "shop.web:app",
        "--port",
        str(port),
    ]
    proc = WorkerProcess(
        argv, {"PYTHONPATH": f"{EXAMPLES}{os.pathsep}{ROOT}", **env}, tmp_path / "server.log"
    )
    proc.wait_for_output("Uvicorn running", timeout=60)
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("mode", ["BackgroundAsync", "BackgroundQueue"])
def test_a_request_enqueues_jobs_that_run_in_the_same_process(tmp_path: Path, mode: str) -> None:
    env = {"SHOP_WORKERS_MODE": mode}
    if mode == "BackgroundQueue":
        require_service("Redis", REDIS_HOST, REDIS_PORT)
        flush_redis_db("cli")
        env = {"UNIFIED_JOBS_ENV": "redis-test", "SHOP_REDIS_URL": redis_url("cli")}
    server, base = start_server(tmp_path, env)
    try:
        status, body = http(
            "POST", f"{base}/orders", {"id": 7, "email": "ada@example.com", "subtotal_cents": 500}
        )
        assert status == 202 and len(body["jobs"]) == 3

        def all_ran() -> bool:
            return http("GET", f"{base}/stats")[1]["done"] == {"receipts": 1, "thumbnails": 1, "revenue": 1}

        assert wait_until(all_ran, timeout=30, interval=0.2), server.output()[-3000:]
        assert http("GET", f"{base}/stats")[1]["revenue_cents"] == 600
    finally:
        os.killpg(server.proc.pid, signal.SIGTERM)
        code = server.proc.wait(30)
    assert code == 0, server.output()[-3000:]
    assert "Finished server process" in server.output()
    if mode == "BackgroundQueue":
        assert "embedded worker consuming" in server.output()


def test_without_an_asgi_app_it_says_what_to_do(tmp_path: Path) -> None:
    proc = WorkerProcess(
        [str(BIN / "unified-jobs"), "--app", "shop.web:jobs", "start", "-s"],
        {"PYTHONPATH": f"{EXAMPLES}{os.pathsep}{ROOT}"},
        tmp_path / "s.log",
    )
    code = proc.proc.wait(60)
    assert code == 1
    assert "no ASGI app to serve: pass --server module:attribute" in proc.output()
    assert "Traceback" not in proc.output()
