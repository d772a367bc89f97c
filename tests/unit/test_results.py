"""A job's result and its error's class path: the helpers, and the memory store's warnings
(the same on every backend: tests/contract/test_results.py)."""

from __future__ import annotations

import logging
import pickle
from typing import Any

import pytest
from celery.utils.serialization import UnpickleableExceptionWrapper
from pydantic import BaseModel

from unified_jobs import Config, Jobs, Worker
from unified_jobs.adapters.celery.request import ERROR_CLASS_ATTRIBUTE, error_class_of
from unified_jobs.core.outcome import RESULT_LIMIT, Outcome, error_path, result_json
from unified_jobs.errors import JobError, WorkerLost


class Outer:
    class Inner(Exception):
        pass


def test_error_path_is_the_module_and_qualified_name_of_the_class() -> None:
    assert error_path(ValueError("x")) == "builtins.ValueError"
    assert error_path(Outer.Inner()) == f"{__name__}.Outer.Inner"
    assert error_path(WorkerLost("x")) == "unified_jobs.errors.WorkerLost"


def test_an_outcome_from_an_error_carries_its_class_unless_told_otherwise() -> None:
    assert Outcome.from_error("failed", KeyError("k"), 1).error_class == "builtins.KeyError"
    assert Outcome.from_error("failed", WorkerLost("died"), 1, error_class=None).error_class is None
    assert Outcome("succeeded").error_class is None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None),
        ({"a": [1, 2.5, None, True]}, '{"a": [1, 2.5, null, true]}'),
        ((1, 2), "[1, 2]"),
        ({1: "one"}, '{"1": "one"}'),
        ("x" * RESULT_LIMIT, None),  # with its quotes, two characters over
    ],
    ids=["none", "dict", "tuple", "int-keys", "over-the-limit"],
)
def test_result_json_is_the_values_json_up_to_the_limit(value: Any, text: str | None) -> None:
    assert result_json(value, "job-1") == text


def test_a_value_at_the_limit_is_kept() -> None:
    value = "x" * (RESULT_LIMIT - 2)  # with its quotes, RESULT_LIMIT characters
    assert result_json(value, "job-1") == f'"{value}"'


@pytest.mark.parametrize(
    ("value", "why"),
    [({1, 2}, "not JSON-serializable"), ("x" * (RESULT_LIMIT + 1), "more than the")],
    ids=["set", "too-big"],
)
def test_a_value_not_kept_is_logged_once_naming_the_job_and_the_job_completes(
    value: Any, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Args(BaseModel):
        n: int

    class Returner(Worker[Args]):
        name = f"tests.unit.Returner.{why}"

        def perform(self, args: Args) -> Any:
            return value

    jobs = Jobs(Config.from_dict({"workers": {"mode": "ForegroundBlocking"}}))
    jobs.register(Returner)
    with caplog.at_level(logging.WARNING, logger="unified_jobs"):
        handle = Returner.perform_later({"n": 1})
    info = jobs.job(handle)
    assert info is not None and info.status == "completed" and info.result is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    message = warnings[0].getMessage()
    assert handle.id in message and type(value).__name__ in message and why in message
    jobs.shutdown()


def test_the_main_process_reads_the_class_a_pool_process_noted_or_the_exceptions_own() -> None:
    plain = pickle.loads(pickle.dumps(Outer.Inner("x")))
    assert error_class_of(plain) == f"{__name__}.Outer.Inner"
    wrapped = JobError("SystemExit: 3")
    setattr(wrapped, ERROR_CLASS_ATTRIBUTE, "builtins.SystemExit")
    assert error_class_of(pickle.loads(pickle.dumps(wrapped))) == "builtins.SystemExit"  # travels along
    lost = WorkerLost("died")
    setattr(lost, ERROR_CLASS_ATTRIBUTE, None)
    assert error_class_of(lost) is None
    unpicklable = UnpickleableExceptionWrapper("myapp.jobs", "Declined", ("no",))
    assert error_class_of(unpicklable) == "myapp.jobs.Declined"
