"""``run_worker`` / the ``jobs_worker`` fixture: a real worker on a real Redis, in the test process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REDIS_HOST, REDIS_PORT, flush_redis_db, redis_url, require_service
from tests.contract.contract_app import AsyncEcho, Echo, Fail, create_app
from tests.procs import ROOT, read_records
from unified_jobs.adapters.celery.testing import JobFailedInWorker
from unified_jobs.errors import UnifiedJobsError
from unified_jobs.testing import run_worker

pytestmark = pytest.mark.timeout(60)

CONFIG = {"workers": {"mode": "BackgroundQueue"}, "queue": {"kind": "Redis", "uri": redis_url("testing")}}


@pytest.fixture
def redis_app(tmp_path: Path):  # type: ignore[no-untyped-def]
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    flush_redis_db("testing")
    jobs = create_app(CONFIG, str(tmp_path / "record.jsonl"))
    yield jobs, tmp_path / "record.jsonl"
    jobs.shutdown()


def test_jobs_go_through_redis_and_a_real_worker(redis_app) -> None:  # type: ignore[no-untyped-def]
    jobs, record = redis_app
    with run_worker(jobs) as worker:
        sync = Echo.perform_later({"n": 1})
        async_ = AsyncEcho.perform_later({"n": 2})
        worker.wait_all([sync, async_])
    assert {r["job"] for r in read_records(record)} == {sync.id, async_.id}
    assert worker.finished()[sync.id] == "SUCCESS"


def test_wait_raises_when_the_job_failed_in_the_worker(redis_app) -> None:  # type: ignore[no-untyped-def]
    jobs, _ = redis_app
    with run_worker(jobs) as worker:
        handle = Fail.perform_later({"n": 3})
        with pytest.raises(JobFailedInWorker, match=f"job {handle.id} ended FAILURE") as info:
            worker.wait(handle)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_wait_times_out_for_a_queue_nobody_consumes(redis_app) -> None:  # type: ignore[no-untyped-def]
    jobs, _ = redis_app
    with run_worker(jobs, queues=["default"]) as worker:
        handle = Echo.perform_later({"n": 1}, queue="nobody-listens")
        expected = r"did not finish within 1s; is its queue consumed by this worker \(default\)"
        with pytest.raises(TimeoutError, match=expected):
            worker.wait(handle, timeout=1)


def test_run_worker_needs_a_real_queue(tmp_path: Path) -> None:
    jobs = create_app({"workers": {"mode": "ForegroundBlocking"}}, str(tmp_path / "r.jsonl"))
    with pytest.raises(UnifiedJobsError, match="needs an app in BackgroundQueue mode"), run_worker(jobs):
        pass


def test_the_jobs_worker_fixture_as_a_user_writes_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the user's test imports the contract app
    flush_redis_db("testing")
    pytester.makeconftest(
        f"""
        import pytest
        from tests.contract.contract_app import create_app

        @pytest.fixture
        def unified_jobs_app(tmp_path):
            return create_app({CONFIG!r}, str(tmp_path / "record.jsonl"))
        """
    )
    pytester.makepyfile(
        """
        from tests.contract.contract_app import Echo, Fail

        def test_runs(jobs_worker):
            handle = Echo.perform_later({"n": 5})
            jobs_worker.wait(handle)
            assert jobs_worker.finished() == {handle.id: "SUCCESS"}

        def test_fails(jobs_worker):
            jobs_worker.wait(Fail.perform_later({"n": 6}))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:celery")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*JobFailedInWorker: job * ended FAILURE in the worker: RuntimeError('job 6 failed on purpose')*"]
    )
