"""An existing Celery project, before and after adopting unified_jobs (the smallest diff).

Before: `app = Celery(...)` with `@app.task` functions, run by `celery -A ... worker`.
After: the three marked lines; the tasks are untouched.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from celery import Celery
from pydantic import BaseModel

from unified_jobs import Config, Jobs, Worker  # added

app = Celery("legacy")
app.conf.task_routes = {"legacy.add": {"queue": "math"}}
app.conf.task_time_limit = 30
app.conf.task_default_queue = "legacy-default"
app.conf.beat_schedule = {"add-every-second": {"task": "legacy.add", "schedule": 1.0, "args": (1, 2)}}


def _record(**fields: object) -> None:
    record = Path(os.environ.get("UJ_LEGACY_RECORD", "/tmp/unified-jobs-legacy.jsonl"))
    with record.open("a", encoding="utf-8") as f:
        f.write(json.dumps(fields) + "\n")


@app.task(name="legacy.add")
def add(x: int, y: int) -> int:
    _record(task="add", x=x, y=y, pid=os.getpid())
    return x + y


@app.task(name="legacy.boom")
def boom(message: str) -> None:
    raise ValueError(message)


@app.task(bind=True, name="legacy.whoami")
def whoami(self: object) -> str:
    task_id: str = self.request.id  # type: ignore[attr-defined]
    _record(task="whoami", id=task_id)
    return task_id


@app.task(name="legacy.notify")
def notify(result: int, label: str = "") -> None:
    _record(task="notify", result=result, label=label)


@app.task(name="legacy.on_error")
def on_error(request: object, exc: object, traceback: object) -> None:
    _record(task="on_error", error=str(exc))


class DatabaseTask(app.Task):  # type: ignore[name-defined,misc]  # Celery's documented custom base pattern
    abstract = True


@app.task(name="legacy.with_base", base=DatabaseTask)
def with_base(x: int) -> int:
    _record(task="with_base", x=x)
    return x


@app.task(
    bind=True,
    name="legacy.flaky",
    autoretry_for=(ConnectionError,),
    retry_backoff=1,
    retry_jitter=False,
    max_retries=2,
)
def flaky(self: Any, succeed_on: int) -> int:
    retries: int = self.request.retries
    _record(task="flaky", retries=retries, at=time.time())
    if retries + 1 < succeed_on:
        raise ConnectionError(f"down on try {retries + 1}")
    return retries


@app.task(bind=True, name="legacy.countdown", max_retries=1)
def countdown(self: Any) -> None:
    _record(task="countdown", retries=self.request.retries, at=time.time())
    raise self.retry(countdown=0.5, exc=LookupError("still missing"))


class GreetArgs(BaseModel):
    name: str


class Greet(Worker[GreetArgs]):
    name = "legacy.Greet"

    def perform(self, args: GreetArgs) -> None:
        _record(task="greet", name=args.name, pid=os.getpid())


class Report(Worker[GreetArgs]):
    name = "legacy.Report"
    queue = "reports"  # a queue of its own: a stock `celery worker` (no -Q) consumes it too

    def perform(self, args: GreetArgs) -> None:
        _record(task="report", name=args.name, pid=os.getpid())


jobs = Jobs(Config.from_dict(json.loads(os.environ["UJ_LEGACY_CONFIG"])), celery_app=app)  # added
jobs.register(Greet)  # added
jobs.register(Report)  # added
