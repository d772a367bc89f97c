"""What a job returned and what it failed of, kept by the job store the same on every backend:
``JobInfo.result`` (the return value as JSON has it) and ``JobInfo.error_class`` (the dotted
path of the exception's class)."""

from __future__ import annotations

from tests.contract.conftest import Harness
from tests.contract.contract_app import AsyncReturns, Raises, Returns
from tests.contract.test_lifecycle import settled
from unified_jobs.core.monitor import JobQuery


def test_a_completed_job_keeps_what_perform_returned_as_json_has_it(harness: Harness) -> None:
    kinds = ["dict", "list", "number", "tuple", "int_keys", "none"]
    handles = {
        (worker.name, kind): worker.perform_later({"kind": kind})
        for worker in (Returns, AsyncReturns)
        for kind in kinds
    }
    results = {key: settled(harness, handle.id, "completed").result for key, handle in handles.items()}
    expected = {
        "dict": {
            "total": 12.5,
            "items": [{"sku": "a-1", "qty": 2}],
            "paid": True,
            "note": None,
            "name": "café",
        },
        "list": [1, "two", 3.0, False, None, [4]],
        "number": 42,
        "tuple": [1, 2],
        "int_keys": {"1": "one"},
        "none": None,
    }
    assert results == {
        (worker.name, kind): expected[kind] for worker in (Returns, AsyncReturns) for kind in kinds
    }
    for handle in handles.values():
        assert harness.jobs.job(handle).error_class is None  # type: ignore[union-attr]
    # the monitor's pages read the same records
    listed = {i.id: i.result for i in harness.jobs.adapter.store.jobs(JobQuery(status="completed")).jobs}
    dict_job, none_job = handles[(Returns.name, "dict")], handles[(AsyncReturns.name, "none")]
    assert listed[dict_job.id] == expected["dict"] and listed[none_job.id] is None


def test_a_value_json_cannot_hold_or_too_big_is_not_kept_and_the_job_completes(harness: Harness) -> None:
    for handle in [Returns.perform_later({"kind": "set"}), Returns.perform_later({"kind": "huge"})]:
        info = settled(harness, handle.id, "completed")
        assert info.result is None and info.last_error is None and info.error_class is None


def test_every_read_gets_its_own_copy_of_the_result(harness: Harness) -> None:
    handle = Returns.perform_later({"kind": "dict"})
    first = settled(harness, handle.id, "completed").result
    first["items"].append("changed")
    assert harness.jobs.job(handle).result["items"] == [{"sku": "a-1", "qty": 2}]  # type: ignore[union-attr]


#: Raises' errors: what the job raises, the exception type ``run_failing`` expects (where a job's
#: error is raised to the code that ran it), the start of ``last_error``, and the class path.
ERRORS: dict[str, tuple[type[BaseException], str, str]] = {
    "declined": (Exception, "PaymentDeclined", "tests.contract.contract_app.PaymentDeclined"),
    "nested": (LookupError, "Nested", "tests.contract.contract_app.Raises.Nested"),
    "value": (ValueError, "ValueError", "builtins.ValueError"),
}


def test_a_failed_job_keeps_its_errors_class_path(harness: Harness) -> None:
    job_ids = {
        error: harness.run_failing(Raises, {"error": error}, raised)
        for error, (raised, _, _) in ERRORS.items()
    }
    for error, job_id in job_ids.items():
        _, name, path = ERRORS[error]
        info = settled(harness, job_id, "failed")
        assert info.error_class == path
        assert info.last_error is not None and info.last_error.startswith(f"{name}: ")
        assert info.result is None
    failed = {f.id: f.error_class for f in harness.jobs.failed(worker=Raises)}
    assert failed == {job_id: ERRORS[error][2] for error, job_id in job_ids.items()}
