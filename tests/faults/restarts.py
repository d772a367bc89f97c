"""What a queue server restart did to a drain of ``Sleep`` jobs (test_redis_restart.py,
test_rabbitmq_restart.py): the jobs lost, the jobs run twice, and how long the workers took to
start a job again."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.procs import read_records, wait_until


@dataclass
class DrainCount:
    lost: list[str]
    twice: list[str]
    #: Seconds from the server's return to the first job started after it (None: none started).
    recovery: float | None


def after_restart(record: Path, ids: list[str], back_at: float, timeout: float) -> DrainCount:
    """Wait up to ``timeout`` s for every job to end (what has not by then is lost), then count."""

    def events(what: str) -> list[dict[str, object]]:
        return [r for r in read_records(record) if r["worker"] == what]

    everything = set(ids)
    wait_until(lambda: {r["job"] for r in events("sleep_end")} >= everything, timeout)
    time.sleep(1.0)  # a job started twice shows its second start
    starts = Counter(str(r["job"]) for r in events("sleep_start"))
    ended = {r["job"] for r in events("sleep_end")}
    after = [float(str(r["at"])) for r in events("sleep_start") if float(str(r["at"])) >= back_at]
    return DrainCount(
        lost=[i for i in ids if i not in ended],
        twice=[i for i in ids if starts[i] > 1],
        recovery=min(after) - back_at if after else None,
    )
