"""The app of the dashboard's browser test, in the test, its worker and its dashboard processes.

Configured from the environment: UJ_DASH_CONFIG (a JSON config mapping) and UJ_DASH_DIR (a
folder of flag files the jobs look at, so the test decides when a job fails or ends).

- ``dash.Hello`` completes.
- ``dash.Flaky`` fails while ``<dir>/broken`` exists (the test removes it, then clicks retry).
- ``dash.Slow`` runs until ``<dir>/release`` exists (a job that is processing while the pages
  load), 60 s at most.
- ``dash.Retrier`` always fails, and waits an hour before its next attempt (retrying).
- ``dash.Parked`` goes to the queue ``parked``, which no worker consumes (queued jobs to purge).
- The recurring schedule ``nightly`` runs ``dash.Hello`` at 03:00 UTC.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

from unified_jobs import Config, Jobs, Retry, Worker


class Args(BaseModel):
    n: int
    note: str = ""
    api_token: str = "hunter2-secret-value"  # shown masked on the pages


def _flag(name: str) -> Path:
    return Path(os.environ["UJ_DASH_DIR"]) / name


class Hello(Worker[Args]):
    name = "dash.Hello"

    def perform(self, args: Args) -> None:
        return None


class Flaky(Worker[Args]):
    name = "dash.Flaky"
    retry = Retry(max_attempts=1)

    def perform(self, args: Args) -> None:
        if _flag("broken").exists():
            raise RuntimeError(f"the flaky job {args.n} is broken today")


class Slow(Worker[Args]):
    name = "dash.Slow"

    def perform(self, args: Args) -> None:
        deadline = time.monotonic() + 60
        while not _flag("release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


class Retrier(Worker[Args]):
    name = "dash.Retrier"
    retry = Retry(max_attempts=3, wait=timedelta(hours=1), jitter=False)

    def perform(self, args: Args) -> None:
        raise ValueError("try again later")


class Parked(Worker[Args]):
    name = "dash.Parked"
    queue = "parked"

    def perform(self, args: Args) -> None:
        return None


def create_app() -> Jobs:
    config = json.loads(os.environ["UJ_DASH_CONFIG"])
    config.setdefault("scheduler", {})["jobs"] = {
        "nightly": {"run": "dash.Hello", "schedule": "0 3 * * *", "args": {"n": 0, "note": "nightly"}}
    }
    jobs = Jobs(Config.from_dict(config))
    for worker in (Hello, Flaky, Slow, Retrier, Parked):
        jobs.register(worker)
    return jobs


jobs = create_app() if "UJ_DASH_CONFIG" in os.environ else None
#: ``celery -A tests.browser.dashboard_app:celery`` (Flower, in the Postgres run).
celery = jobs.celery if jobs is not None and jobs.mode == "BackgroundQueue" else None


def seed(app: Jobs) -> dict[str, list[str]]:
    """Jobs on their way to every state; returns their ids by role. ``<dir>/broken`` must exist
    (the flaky ones fail) and ``<dir>/release`` must not (the slow one keeps running)."""
    later = timedelta(hours=1)

    def ids(worker: type[Worker[Args]], *ns: int, **options: object) -> list[str]:
        return [app.perform_later(worker, Args(n=n, note=f"{worker.name}-{n}"), **options).id for n in ns]  # type: ignore[arg-type]

    return {
        "completed": ids(Hello, 1, 2, 3),
        "failed": ids(Flaky, 1, 2),
        "processing": ids(Slow, 1),
        "retrying": ids(Retrier, 1),
        "scheduled": ids(Hello, 10, 11, wait=later),
        "parked": ids(Parked, 1, 2) + ids(Parked, 3, wait=later),
    }
