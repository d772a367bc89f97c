"""The SQL queues through a ``Jobs`` app and `unified-jobs start --worker` (the transport's own
tests are in test_sql_transport.py and test_sql_worker.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import PG_HOST, PG_PORT, PG_URL, clear_sql_jobs, require_service, sql_prefix
from tests.contract.contract_app import RESULTS, Echo, Fail, Raises, Returns, create_app
from tests.procs import WorkerProcess, read_records, unified_jobs_worker, wait_until
from unified_jobs.adapters.sql import job_counts
from unified_jobs.adapters.sql.engine import get_engine

pytestmark = pytest.mark.timeout(120)

PREFIX = sql_prefix("sqlapp")
FAST = ("--", "--without-mingle", "--without-gossip")


@pytest.fixture(params=["postgres", "sqlite"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "postgres":
        require_service("PostgreSQL", PG_HOST, PG_PORT)
        uri = PG_URL
    else:
        uri = f"sqlite:///{tmp_path}/jobs.db"
    clear_sql_jobs(uri, PREFIX)
    return {
        "kind": "Postgres" if request.param == "postgres" else "Sqlite",
        "uri": uri,
        "table_prefix": PREFIX,
    }


def rows(uri: str) -> list[Any]:
    with get_engine(uri).begin() as conn:
        return list(
            conn.execute(sa.text(f"SELECT task_name, status, last_error FROM {PREFIX}jobs ORDER BY id"))
        )


def start(tmp_path: Path, config: dict[str, Any], record: Path, *args: str) -> WorkerProcess:
    env = {"UJ_CONTRACT_CONFIG": json.dumps(config), "UJ_CONTRACT_RECORD": str(record)}
    worker = unified_jobs_worker(
        "tests.contract.contract_app:app_from_env", env, tmp_path / "worker.log", "-c", "1", *args, *FAST
    )
    worker.wait_for_output("ready.")
    return worker


def test_a_failed_job_is_kept_as_failed_with_its_error(queue: dict[str, Any], tmp_path: Path) -> None:
    config = {"workers": {"mode": "BackgroundQueue"}, "queue": queue}
    record = tmp_path / "record.jsonl"
    jobs = create_app(config, str(record))
    worker = start(tmp_path, config, record)
    try:
        Fail.perform_later({"n": 4})
        Echo.perform_later({"n": 5})
        assert wait_until(lambda: len(read_records(record)) >= 2, timeout=30), worker.output()[-3000:]

        def settled() -> bool:
            return {r.status for r in rows(queue["uri"])} == {"failed", "completed"}

        assert wait_until(settled, timeout=15), rows(queue["uri"])
    finally:
        worker.stop()
    by_name = {r.task_name: r for r in rows(queue["uri"])}
    assert by_name["contract.Fail"].status == "failed"
    error, _, trace = (by_name["contract.Fail"].last_error or "").partition("\n\n")
    assert error == "RuntimeError: job 4 failed on purpose"
    assert trace.startswith("Traceback") and "RuntimeError: job 4 failed on purpose" in trace
    assert by_name["contract.Echo"].status == "completed"
    jobs.shutdown()


def test_a_message_with_invalid_args_is_failed_not_run_and_kept(
    queue: dict[str, Any], tmp_path: Path
) -> None:
    config = {"workers": {"mode": "BackgroundQueue"}, "queue": queue}
    record = tmp_path / "record.jsonl"
    jobs = create_app(config, str(record))
    bad = jobs.celery.send_task("contract.Echo", kwargs={"n": "NaN-not-int"}, queue="default")
    Echo.perform_later({"n": 1})
    worker = start(tmp_path, config, record)
    try:
        assert wait_until(lambda: len(read_records(record)) >= 1, timeout=30)
        worker.wait_for_output(f"job {bad.id} (contract.Echo) rejected, its arguments do not validate")
        assert wait_until(lambda: "failed" in {r.status for r in rows(queue["uri"])}, timeout=15)
    finally:
        worker.stop()
    assert [r["args"]["n"] for r in read_records(record)] == [1]
    assert sorted(r.status for r in rows(queue["uri"])) == ["completed", "failed"]
    rejected = jobs.job(bad.id)
    assert rejected is not None and rejected.error_class == "pydantic_core._pydantic_core.ValidationError"
    jobs.shutdown()


@pytest.mark.parametrize(("pool", "on_ack"), [("threads", "complete"), ("prefork", "delete")])
def test_results_and_error_classes_on_a_pool_and_on_ack(
    queue: dict[str, Any], tmp_path: Path, pool: str, on_ack: str
) -> None:
    """A threads pool's jobs run in the process that acks them (the prefork one is the contract
    suite's); with on_ack: delete a completed job's row, and so its result, is gone."""
    config = {"workers": {"mode": "BackgroundQueue"}, "queue": {**queue, "on_ack": on_ack}}
    record = tmp_path / "record.jsonl"
    jobs = create_app(config, str(record))
    worker = start(tmp_path, config, record, "--pool", pool)
    try:
        returned = Returns.perform_later({"kind": "dict"})
        nothing = Returns.perform_later({"kind": "none"})
        failed = Raises.perform_later({"error": "declined"})
        assert wait_until(lambda: len(read_records(record)) >= 3, timeout=30), worker.output()[-3000:]

        def settled() -> bool:
            info = jobs.job(failed)
            done = [jobs.status(h) for h in (returned, nothing)]
            ended = [None, None] if on_ack == "delete" else ["completed", "completed"]
            return info is not None and info.status == "failed" and done == ended

        assert wait_until(settled, timeout=15), rows(queue["uri"])
    finally:
        worker.stop()
    info = jobs.job(failed)
    assert info is not None and info.error_class == "tests.contract.contract_app.PaymentDeclined"
    if on_ack == "complete":
        kept, none = jobs.job(returned), jobs.job(nothing)
        assert kept is not None and kept.result == RESULTS["dict"] and kept.error_class is None
        assert none is not None and none.result is None
    jobs.shutdown()


def test_dangerously_flush_deletes_only_this_apps_queued_jobs(queue: dict[str, Any], tmp_path: Path) -> None:
    config = {"workers": {"mode": "BackgroundQueue"}, "queue": queue}
    record = tmp_path / "record.jsonl"
    jobs = create_app(config, str(record))
    for n in range(4):
        Echo.perform_later({"n": n})
    # Another app's jobs in the same tables, on a queue this app does not use.
    jobs.celery.send_task("other.app.Task", kwargs={}, queue="another-apps-queue")
    flushing = {"workers": {"mode": "BackgroundQueue"}, "queue": {**queue, "dangerously_flush": True}}
    worker = start(tmp_path, flushing, record)
    try:
        worker.wait_for_output("dangerously_flush: deleted 4 queued job(s)")
        Echo.perform_later({"n": 99})
        assert wait_until(lambda: len(read_records(record)) >= 1, timeout=30)
    finally:
        worker.stop()
    assert [r["args"]["n"] for r in read_records(record)] == [99]
    assert job_counts(queue["uri"], PREFIX)["another-apps-queue"] == {"queued": 1}
    jobs.shutdown()
