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
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from unified_jobs import Config, Jobs, Worker


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


WORKERS = (Echo, AsyncEcho, Fail, Sleep, Mail)


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
