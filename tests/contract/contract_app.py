"""The app the contract suite runs, in the test process and in worker processes alike.

Configured from environment variables so that a worker subprocess builds the same app:
UJ_CONTRACT_CONFIG (a JSON config mapping) and UJ_CONTRACT_RECORD (a file every job appends
one JSON line to).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from unified_jobs import Config, Jobs, Retry, Worker


class Item(BaseModel):
    sku: str
    qty: int


class EchoArgs(BaseModel):
    n: int
    label: str = ""
    items: list[Item] = []
    when: str | None = None


class SleepArgs(BaseModel):
    n: int
    seconds: float


def record(context: dict[str, Any], **fields: Any) -> None:
    line = json.dumps({"pid": os.getpid(), "at": time.time(), **fields}) + "\n"
    with open(context["record"], "a", encoding="utf-8") as f:
        f.write(line)


class Echo(Worker[EchoArgs]):
    name = "contract.Echo"

    def perform(self, args: EchoArgs) -> None:
        record(
            self.ctx, worker="echo", job=self.job_id, args=args.model_dump(mode="json"), ctx=self.ctx["tag"]
        )


class AsyncEcho(Worker[EchoArgs]):
    name = "contract.AsyncEcho"
    queue = "async"

    async def perform(self, args: EchoArgs) -> None:
        await asyncio.sleep(0.001)
        record(self.ctx, worker="async_echo", job=self.job_id, args=args.model_dump(mode="json"))


class Fail(Worker[EchoArgs]):
    name = "contract.Fail"

    def perform(self, args: EchoArgs) -> None:
        record(self.ctx, worker="fail", job=self.job_id, args=args.model_dump(mode="json"))
        raise RuntimeError(f"job {args.n} failed on purpose")


class Sleep(Worker[SleepArgs]):
    name = "contract.Sleep"

    def perform(self, args: SleepArgs) -> None:
        record(self.ctx, worker="sleep_start", job=self.job_id, n=args.n)
        time.sleep(args.seconds)
        record(self.ctx, worker="sleep_end", job=self.job_id, n=args.n)


class Mail(Worker[EchoArgs]):
    name = "contract.Mail"
    queue = "mail"
    tags = ("email",)

    def perform(self, args: EchoArgs) -> None:
        record(self.ctx, worker="mail", job=self.job_id, args=args.model_dump(mode="json"))


class FlakyArgs(BaseModel):
    fail_times: int


class Flaky(Worker[FlakyArgs]):
    """Fails its first ``fail_times`` attempts."""

    name = "contract.Flaky"
    retry = Retry(max_attempts=3, wait=0.3, backoff=2.0, jitter=False, retry_on=(ConnectionError,))

    def perform(self, args: FlakyArgs) -> None:
        record(self.ctx, worker=self.name, job=self.job_id, attempt=self.attempt)
        if self.attempt <= args.fail_times:
            raise ConnectionError(f"attempt {self.attempt} failed on purpose")


class FlakyTwice(Flaky):
    name = "contract.FlakyTwice"
    retry = Retry(max_attempts=2, wait=0.1, jitter=False)


class FailsUntil(Worker[FlakyArgs]):
    """Fails its first ``fail_times`` runs, counted over every retry (also ``jobs.retry``)."""

    name = "contract.FailsUntil"
    retry = Retry(max_attempts=2, wait=0.1, jitter=False)

    def perform(self, args: FlakyArgs) -> None:
        with open(self.ctx["record"], encoding="utf-8") as f:
            runs = sum(1 for line in f if line.strip() and json.loads(line)["job"] == self.job_id)
        record(self.ctx, worker=self.name, job=self.job_id, attempt=self.attempt)
        if runs < args.fail_times:
            raise ConnectionError(f"run {runs + 1} failed on purpose")


class SlowRetry(Flaky):
    name = "contract.SlowRetry"
    retry = Retry(max_attempts=2, wait=3.0, jitter=False)


class PatientRetry(Flaky):
    """Its retry waits long enough to be seen waiting on a slow machine (tests cancel it)."""

    name = "contract.PatientRetry"
    retry = Retry(max_attempts=2, wait=60.0, jitter=False)


class Discarding(Worker[EchoArgs]):
    name = "contract.Discarding"
    retry = Retry(max_attempts=5, wait=0.1, discard_on=(ValueError,))

    def perform(self, args: EchoArgs) -> None:
        record(self.ctx, worker=self.name, job=self.job_id, attempt=self.attempt)
        raise ValueError("this input can never work")


class Limited(Worker[EchoArgs]):
    name = "contract.Limited"
    time_limit = 0.5
    retry = Retry(max_attempts=2, wait=0.1, jitter=False)

    def perform(self, args: EchoArgs) -> None:
        record(self.ctx, worker=self.name, job=self.job_id, attempt=self.attempt)
        for _ in range(200):
            time.sleep(0.05)
        record(self.ctx, worker="limited_end", job=self.job_id)


class Stuck(Worker[EchoArgs]):
    """Blocked in one C call (``time.sleep``) past its time limit: the executor's own limit
    cannot stop it, only the worker's hard limit (``time_limit`` plus 5 s) can."""

    name = "contract.Stuck"
    time_limit = 0.5

    def perform(self, args: EchoArgs) -> None:
        record(self.ctx, worker=self.name, job=self.job_id)
        time.sleep(30)
        record(self.ctx, worker="stuck_end", job=self.job_id)


class Exiting(Worker[EchoArgs]):
    name = "contract.Exiting"

    def perform(self, args: EchoArgs) -> None:
        record(self.ctx, worker=self.name, job=self.job_id)
        os._exit(1)


class LongAsync(Worker[SleepArgs]):
    name = "contract.LongAsync"

    async def perform(self, args: SleepArgs) -> None:
        record(self.ctx, worker="long_start", job=self.job_id)
        await asyncio.sleep(args.seconds)
        record(self.ctx, worker="long_end", job=self.job_id)


class UniqueEcho(Worker[EchoArgs]):
    """Unique by its arguments for ten minutes."""

    name = "contract.UniqueEcho"
    unique_for = timedelta(minutes=10)

    def perform(self, args: EchoArgs) -> None:
        record(self.ctx, worker=self.name, job=self.job_id, n=args.n, attempt=self.attempt)


class UniqueFail(Worker[EchoArgs]):
    """Unique by its arguments; fails its first attempt, then succeeds."""

    name = "contract.UniqueFail"
    unique_for = timedelta(minutes=10)
    retry = Retry(max_attempts=2, wait=0.5, jitter=False)

    def perform(self, args: EchoArgs) -> None:
        record(self.ctx, worker=self.name, job=self.job_id, n=args.n, attempt=self.attempt)
        if self.attempt == 1:
            raise ConnectionError("the first attempt fails on purpose")


class BrieflyUnique(Worker[EchoArgs]):
    """Unique by its arguments for two seconds only."""

    name = "contract.BrieflyUnique"
    unique_for = 2.0

    def perform(self, args: EchoArgs) -> None:
        record(self.ctx, worker=self.name, job=self.job_id, n=args.n)


class ResultArgs(BaseModel):
    #: Which of ``RESULTS`` to return.
    kind: str


#: What ``Returns`` returns, by kind: JSON-compatible values, and others.
RESULTS: dict[str, Any] = {
    "dict": {"total": 12.5, "items": [{"sku": "a-1", "qty": 2}], "paid": True, "note": None, "name": "café"},
    "list": [1, "two", 3.0, False, None, [4]],
    "number": 42,
    "tuple": (1, 2),  # kept as JSON has it: [1, 2]
    "int_keys": {1: "one"},  # kept as JSON has it: {"1": "one"}
    "set": {1, 2, 3},  # not JSON-serializable: not kept
    "huge": "x" * 1_100_000,  # over the 1 MiB kept
    "none": None,
}


class Returns(Worker[ResultArgs]):
    name = "contract.Returns"

    def perform(self, args: ResultArgs) -> Any:
        record(self.ctx, worker=self.name, job=self.job_id, kind=args.kind)
        return RESULTS[args.kind]


class AsyncReturns(Worker[ResultArgs]):
    name = "contract.AsyncReturns"
    queue = "async"

    async def perform(self, args: ResultArgs) -> Any:
        await asyncio.sleep(0.001)
        record(self.ctx, worker=self.name, job=self.job_id, kind=args.kind)
        return RESULTS[args.kind]


class PaymentDeclined(Exception):
    """An application's own error (its class path is kept with the failed job)."""


class RaiseArgs(BaseModel):
    #: "declined" (PaymentDeclined), "nested" (Raises.Nested), or "value" (ValueError).
    error: str


class Raises(Worker[RaiseArgs]):
    """Fails at once (no retry) with the error asked for."""

    name = "contract.Raises"

    class Nested(LookupError):
        """An error class defined inside another (its path has the qualified name)."""

    def perform(self, args: RaiseArgs) -> None:
        record(self.ctx, worker=self.name, job=self.job_id, error=args.error)
        if args.error == "declined":
            raise PaymentDeclined("card declined")
        if args.error == "nested":
            raise Raises.Nested("no such thing")
        raise ValueError("a bad value")


WORKERS = (
    *(Echo, AsyncEcho, Fail, Sleep, Mail),
    *(Flaky, FlakyTwice, FailsUntil, SlowRetry, PatientRetry, Discarding, Limited, Stuck, Exiting, LongAsync),
    *(UniqueEcho, UniqueFail, BrieflyUnique),
    *(Returns, AsyncReturns, Raises),
)


def create_app(config: dict[str, Any] | None = None, record_path: str | None = None) -> Jobs:
    config = config if config is not None else json.loads(os.environ["UJ_CONTRACT_CONFIG"])
    record_path = record_path or os.environ["UJ_CONTRACT_RECORD"]
    Path(record_path).touch()
    jobs = Jobs(Config.from_dict(config), context={"record": record_path, "tag": "contract-ctx"})
    for worker in WORKERS:
        jobs.register(worker)
    return jobs


def app_from_env() -> Jobs:
    return create_app()
