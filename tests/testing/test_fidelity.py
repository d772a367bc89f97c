"""ForegroundBlocking fidelity: inline jobs get what a real worker gets.

A real worker receives the Job's JSON and hands it to ``Jobs.prepare``, which validates it
into the model and builds a fresh worker with the app's context. Each test runs the same
job three ways and checks they agree: inline (ForegroundBlocking), recorded then
``perform_enqueued_jobs``, and the recorded Job handed to ``Jobs.prepare`` directly (the
path a queue's worker takes). The differences that remain are listed once, in
docs/guides/testing.md ("What inline mode does not do").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pydantic
import pytest
from pydantic import BaseModel

from tests.testing.conftest import make_app
from unified_jobs import Jobs, Worker
from unified_jobs._async import run_coroutine_sync
from unified_jobs.testing import perform_enqueued_jobs, recording

SEEN: list[dict[str, Any]] = []


class Payload(BaseModel):
    user_id: int
    meta: dict[str, Any] = {}
    when: datetime | None = None
    amount: Decimal = Decimal("0")
    ratio: float = 0.0


class Observe(Worker[Payload]):
    def perform(self, args: Payload) -> None:
        SEEN.append({"worker": self, "ctx": self.ctx, "args": args})


class Fail(Worker[Payload]):
    def perform(self, args: Payload) -> None:
        raise LookupError(f"user {args.user_id} not found")


Runner = Callable[[Jobs, BaseModel | dict[str, Any]], None]


def run_inline(app: Jobs, args: BaseModel | dict[str, Any]) -> None:
    Observe.perform_later(args)


def run_recorded(app: Jobs, args: BaseModel | dict[str, Any]) -> None:
    with recording(app):
        Observe.perform_later(args)
        perform_enqueued_jobs()


def run_as_a_queue_worker(app: Jobs, args: BaseModel | dict[str, Any]) -> None:
    with recording(app) as recorder:
        Observe.perform_later(args)
    [recorded] = recorder.enqueued_jobs()
    result = app.executor.run(recorded.job).value  # what a queue's worker does with the message body
    if inspect.iscoroutine(result):
        run_coroutine_sync(result)


RUNNERS = pytest.mark.parametrize(
    "run", [run_inline, run_recorded, run_as_a_queue_worker], ids=["inline", "recorded", "queue-worker"]
)


@pytest.fixture
def app() -> Jobs:
    SEEN.clear()
    jobs = make_app("ForegroundBlocking", context=object())
    jobs.register(Observe)
    jobs.register(Fail)
    return jobs


@RUNNERS
def test_args_make_the_json_round_trip(app: Jobs, run: Runner) -> None:
    when = datetime(2030, 5, 17, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    original = Payload(user_id=1, meta={"pair": (1, 2), "n": 1}, when=when, amount=Decimal("1.10"))
    run(app, original)

    [seen] = SEEN
    args = seen["args"]
    assert type(args) is Payload
    assert args is not original  # rebuilt from JSON, not handed over
    assert args.meta == {"pair": [1, 2], "n": 1}  # a tuple inside Any comes back a list, as from a queue
    assert args.when == when
    assert args.amount == Decimal("1.10")


@RUNNERS
def test_a_fresh_worker_with_the_apps_context_per_job(app: Jobs, run: Runner) -> None:
    run(app, {"user_id": 1})
    run(app, {"user_id": 2})
    first, second = SEEN
    assert type(first["worker"]) is Observe
    assert first["worker"] is not second["worker"]
    assert first["ctx"] is app.context and second["ctx"] is app.context
    assert [s["args"].user_id for s in SEEN] == [1, 2]


@RUNNERS
def test_dict_args_are_validated_and_coerced_like_on_a_queue(app: Jobs, run: Runner) -> None:
    run(app, {"user_id": "42", "amount": "3.5"})
    [seen] = SEEN
    assert seen["args"] == Payload(user_id=42, amount=Decimal("3.5"))


@RUNNERS
def test_invalid_args_fail_at_enqueue_and_nothing_runs(app: Jobs, run: Runner) -> None:
    with pytest.raises(pydantic.ValidationError):
        run(app, {"user_id": "not a number"})
    assert SEEN == []


@RUNNERS
def test_a_value_that_does_not_survive_json_fails_at_enqueue(app: Jobs, run: Runner) -> None:
    # NaN is written as JSON null, which a float field rejects on the worker's side.
    with pytest.raises(pydantic.ValidationError, match="ratio"):
        run(app, Payload(user_id=1, ratio=float("nan")))
    assert SEEN == []


def test_the_observations_agree_across_the_three_ways(app: Jobs) -> None:
    args = Payload(user_id=7, meta={"tags": ("a", "b")}, amount=Decimal("0.30"))
    dumps = []
    for run in (run_inline, run_recorded, run_as_a_queue_worker):
        SEEN.clear()
        run(app, args)
        [seen] = SEEN
        dumps.append(seen["args"].model_dump_json())
    assert dumps[0] == dumps[1] == dumps[2]
    assert '"tags":["a","b"]' in dumps[0]


def test_inline_exceptions_propagate_to_the_enqueuing_caller(app: Jobs) -> None:
    with pytest.raises(LookupError, match="user 3 not found"):
        Fail.perform_later({"user_id": 3})


def test_recorded_exceptions_propagate_from_perform_enqueued_jobs(app: Jobs) -> None:
    with recording(app):
        Fail.perform_later({"user_id": 3})  # recorded, does not raise
        with pytest.raises(LookupError, match="user 3 not found"):
            perform_enqueued_jobs()


def test_inline_runs_now_whatever_the_delay_and_priority(app: Jobs) -> None:
    # Documented differences from a real worker: no waiting, no reordering by priority.
    Observe.perform_later({"user_id": 1}, wait=timedelta(hours=1))
    assert len(SEEN) == 1
    Observe.perform_later({"user_id": 2}, priority=0)
    Observe.perform_later({"user_id": 3}, priority=9)
    assert [s["args"].user_id for s in SEEN] == [1, 2, 3]
