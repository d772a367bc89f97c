"""The harness the contract suite runs against: one parameter per adapter.

Each backend gives a ``Jobs`` app built by ``contract_app.create_app`` and a way to wait for
the records its jobs write. Queue backends add a real worker process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.contract import contract_app
from unified_jobs import Jobs


@dataclass
class Harness:
    backend: str
    jobs: Jobs
    record: Path
    config: dict[str, Any]
    #: Jobs have run by the time perform_later returns.
    inline: bool = False
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        text = self.record.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records()
            if predicate(recs) or time.monotonic() > deadline:
                return recs
            time.sleep(0.02)

    def wait_for_count(
        self, n: int, timeout: float = 20.0, worker: str | None = None
    ) -> list[dict[str, Any]]:
        def enough(recs: list[dict[str, Any]]) -> bool:
            return len([r for r in recs if worker is None or r["worker"] == worker]) >= n

        return self.wait_for(enough, timeout)


BACKENDS: dict[str, dict[str, Any]] = {
    "inline": {"workers": {"mode": "ForegroundBlocking"}},
    "inprocess": {"workers": {"mode": "BackgroundAsync", "concurrency": 4}},
}


@pytest.fixture(params=list(BACKENDS))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    backend: str = request.param
    config = BACKENDS[backend]
    record = tmp_path / "record.jsonl"
    jobs = contract_app.create_app(config, str(record))
    h = Harness(backend, jobs, record, config, inline=backend == "inline")
    yield h
    jobs.shutdown(wait=True, timeout=10)
    for cleanup in reversed(h.cleanups):
        cleanup()
