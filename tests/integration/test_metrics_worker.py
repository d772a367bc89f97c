"""``unified-jobs start --worker --metrics-port`` on the SQLite kind with a prefork pool of two
(and with ``--pool processes``, two processes under a supervisor): /metrics, served by the main
process, sums what both pool processes counted (prometheus-client's multiprocess mode, in a
private directory removed when the worker stops), and has the queue gauges."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import sql_prefix
from tests.contract.contract_app import Echo, Fail, FlakyTwice, Sleep, create_app
from tests.procs import WorkerProcess, read_records, unified_jobs_worker, wait_until
from unified_jobs import Jobs

pytestmark = pytest.mark.timeout(120)

PREFIX = sql_prefix("metrics")
FAST = ("--", "--without-mingle", "--without-gossip")
SLEEPS = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scraper:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def text(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as answer:
            assert answer.status == 200
            return str(answer.read().decode())

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        found = {}
        for family in text_string_to_metric_families(self.text()):
            for sample in family.samples:
                found[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return found

    def value(self, name: str, **labels: str) -> float:
        return self.samples().get((name, frozenset(labels.items())), 0.0)

    def up(self) -> bool:
        try:
            self.text()
        except OSError:
            return False
        return True


class Worker:
    def __init__(self, folder: Path, process: WorkerProcess, port: int, config: dict[str, object]) -> None:
        self.folder = folder
        self.process = process
        self.scraper = Scraper(port)
        self.config = config
        self.record = folder / "record.jsonl"


@pytest.fixture(scope="module", params=["prefork", "processes"])
def worker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """The worker, with Celery's prefork pool (the main process serves, two pool processes
    count), or with ``--pool processes`` (the supervisor serves, its two processes count)."""
    folder = tmp_path_factory.mktemp("metrics")
    config = {
        "workers": {"mode": "BackgroundQueue"},
        "queue": {"kind": "Sqlite", "uri": f"sqlite:///{folder}/jobs.db", "table_prefix": PREFIX},
    }
    record = folder / "record.jsonl"
    create_app(config, str(record)).shutdown()  # the tables, before the worker polls
    port = free_port()
    env = {"UJ_CONTRACT_CONFIG": json.dumps(config), "UJ_CONTRACT_RECORD": str(record)}
    process = unified_jobs_worker(
        "tests.integration.observability_app:app_from_env",
        env,
        folder / "worker.log",
        "-c",
        "2",
        "--pool",
        str(request.param),
        "--metrics-port",
        str(port),
        *FAST,
    )
    running = Worker(folder, process, port, config)
    try:
        process.wait_for_output("ready.", timeout=60)
        assert wait_until(running.scraper.up, 10), process.output()[-3000:]
        yield running
    finally:
        process.stop()


@pytest.fixture
def producer(worker: Worker) -> Iterator[Jobs]:
    jobs = create_app(worker.config, str(worker.record))
    yield jobs
    jobs.shutdown()


def test_metrics_move_while_the_jobs_run_and_sum_both_pool_processes(worker: Worker, producer: Jobs) -> None:
    scrape = worker.scraper
    sleep = {"worker": "contract.Sleep", "queue": "default"}
    before = scrape.value("unified_jobs_jobs_succeeded_total", **sleep)
    producer.perform_all_later(Sleep, [{"n": n, "seconds": 0.15} for n in range(SLEEPS)])
    producer.perform_later(Fail, {"n": 1})
    producer.perform_later(FlakyTwice, {"fail_times": 1})

    seen: list[float] = []

    def midway() -> bool:  # some done and some not, as one scrape sees it
        seen.append(scrape.value("unified_jobs_jobs_succeeded_total", **sleep))
        return before < seen[-1] < before + SLEEPS

    assert wait_until(midway, 30, interval=0.05), f"the counter never seen mid-way: {seen}"
    assert wait_until(
        lambda: scrape.value("unified_jobs_jobs_succeeded_total", **sleep) == before + SLEEPS, 30
    )

    pids = {r["pid"] for r in read_records(worker.record) if r["worker"] == "sleep_end"}
    assert len(pids) == 2, f"the jobs ran in {pids}: the sum of two pool processes was not tested"
    samples = scrape.samples()

    def get(name: str, worker_name: str, **labels: str) -> float:
        return samples.get(
            (name, frozenset({"worker": worker_name, "queue": "default", **labels}.items())), 0.0
        )

    assert get("unified_jobs_jobs_started_total", "contract.Sleep") == before + SLEEPS
    assert (
        get("unified_jobs_job_duration_seconds_count", "contract.Sleep", outcome="succeeded")
        == before + SLEEPS
    )
    assert (
        get("unified_jobs_job_duration_seconds_sum", "contract.Sleep", outcome="succeeded") >= 0.15 * SLEEPS
    )
    assert wait_until(
        lambda: (
            scrape.value("unified_jobs_jobs_succeeded_total", worker="contract.FlakyTwice", queue="default")
            == 1
        ),
        20,
    )
    samples = scrape.samples()
    assert get("unified_jobs_jobs_failed_total", "contract.Fail") == 1
    assert get("unified_jobs_job_duration_seconds_count", "contract.Fail", outcome="failed") == 1
    assert get("unified_jobs_jobs_retried_total", "contract.FlakyTwice") == 1
    assert get("unified_jobs_jobs_started_total", "contract.FlakyTwice") == 2
    # enqueues are counted where they happen: here in the test process, which enabled no metrics
    assert get("unified_jobs_jobs_enqueued_total", "contract.Sleep") == 0


def test_the_queue_gauges_are_served_from_the_job_store(worker: Worker, producer: Jobs) -> None:
    scrape = worker.scraper
    assert scrape.value("unified_jobs_queue_stats_supported") == 1
    assert scrape.value("unified_jobs_store_up") == 1
    producer.perform_later(Echo, {"n": 1}, queue="metrics-parked")  # no worker consumes it
    parked = {"queue": "metrics-parked"}

    def counted() -> bool:
        return scrape.value("unified_jobs_queue_depth", state="queued", **parked) == 1

    assert wait_until(counted, 10), scrape.text()
    for state in ("scheduled", "processing", "failed"):
        assert ("unified_jobs_queue_depth", frozenset({**parked, "state": state}.items())) in scrape.samples()
    age = scrape.value("unified_jobs_queue_oldest_job_age_seconds", **parked)
    assert 0 < age < 60


def test_the_pool_processes_count_in_a_private_directory_removed_at_stop(worker: Worker) -> None:
    match = re.search(r"pool processes count in ([^\s)]+)", worker.process.output())
    assert match, worker.process.output()[-3000:]
    folder = Path(match.group(1))
    counters = sorted(p.name for p in folder.glob("counter_*.db"))
    assert len(counters) >= 2, counters  # one file per pool process that ran a job (and the main's)
    worker.process.stop()
    assert not folder.exists(), "the metrics directory outlived the worker"
