"""A RabbitMQ node of the test's own (``tests.procs.PrivateRabbitMQ``), stopped cleanly and
started again while two real ``unified-jobs start --worker`` processes drain its queue: what is
lost, what runs twice, and how long the workers take to resume. Its row goes to the fault table
(``fault_row``). The job store is a Redis of the test's own, which stays up.

Celery declares durable queues and publishes persistent messages, so the node keeps every job
over the restart. A message a worker held when its connection went away (prefetched, running,
or run but not yet acked) goes back to the queue and is delivered again. The ones whose job had
run are not run again: the job store says that attempt ended (2-4 of 300 ran twice in each run
before). The workers must have distinct names (``-n``): see docs/explanation/guarantees.md,
"Queue server restarts".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.contract.contract_app import Sleep, create_app
from tests.faults.restarts import after_restart
from tests.procs import PrivateRabbitMQ, PrivateRedis, WorkerPool, read_records, wait_until

pytestmark = pytest.mark.timeout(240)

APP = "tests.contract.contract_app:app_from_env"
#: The most jobs a worker holds (running and prefetched): concurrency 2 x Celery's prefetch 4.
HELD = 8
JOBS = 300
#: Seconds each job sleeps: the jobs left when the stop begins take longer to drain (at least
#: 260 x 0.25 / 4 slots = 16 s) than ``rabbitmqctl stop`` takes (about 8 s; with 0.02 s jobs a
#: loaded CI machine drained them all first).
JOB_SEC = 0.25


@pytest.fixture
def rabbit() -> Iterator[PrivateRabbitMQ]:
    try:
        node = PrivateRabbitMQ()
    except RuntimeError as why:
        if IN_CI:
            pytest.fail(f"{why} (CI is set, so this is a failure, not a skip)")
        pytest.skip(str(why))
    try:
        yield node
    finally:
        node.destroy()


def test_a_restart_mid_drain_loses_nothing(
    rabbit: PrivateRabbitMQ, tmp_path: Path, fault_row: Callable[..., None]
) -> None:
    store = PrivateRedis(tmp_path)
    record = tmp_path / "record.jsonl"
    record.touch()
    config = {
        "workers": {"mode": "BackgroundQueue"},
        "queue": {"kind": "RabbitMQ", "uri": rabbit.url, "store_uri": store.url},
    }
    env = {"UJ_CONTRACT_RECORD": str(record), "UJ_CONTRACT_CONFIG": json.dumps(config)}
    jobs = create_app(config, str(record))
    pool = WorkerPool(APP, tmp_path)
    try:
        ids = [Sleep.perform_later({"n": n, "seconds": JOB_SEC}).id for n in range(JOBS)]
        for name in ("a", "b"):
            args = ["--concurrency", "2", "--", "--without-mingle", "--without-gossip", "-n", f"{name}@%h"]
            pool(env, *args, name=name)

        def events(what: str) -> list[dict[str, object]]:
            return [r for r in read_records(record) if r["worker"] == what]

        assert wait_until(lambda: len(events("sleep_end")) >= 40, 60), pool.started[0].output()[-3000:]
        rabbit.stop()
        assert len(events("sleep_end")) < JOBS, "the drain ended before the node stopped: nothing was tested"
        time.sleep(2.0)
        rabbit.start()
        back_at = time.time()
        outcome = after_restart(record, ids, back_at, 90)
        lost, twice = len(outcome.lost), len(outcome.twice)
        recovery = outcome.recovery
        fault_row("RabbitMQ restart mid-drain (down about 10 s)", "RabbitMQ", lost, twice, recovery)
        details = "\n".join(w.output()[-3000:] for w in pool.started)
        details += f"\nlost: {outcome.lost}\nrun twice: {outcome.twice}"
        assert lost == 0, details
        assert twice == 0, details
        assert all(w.proc.poll() is None for w in pool.started), f"a worker exited\n{details}"
    finally:
        pool.stop_all()
        jobs.shutdown()
        store.stop()
