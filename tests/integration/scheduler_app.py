"""The app of tests/integration/test_scheduler.py, in its worker and scheduler processes alike.

Configured from the environment: UJ_SCHED_CONFIG (a JSON config mapping, with a
``scheduler.jobs`` entry every second) and UJ_SCHED_RECORD (a file every job appends a JSON
line to: its id and the process that ran it).
"""

from __future__ import annotations

import json
import os
import time

from pydantic import BaseModel

from unified_jobs import Config, Jobs, Worker


class TickArgs(BaseModel):
    label: str


class Tick(Worker[TickArgs]):
    name = "sched.Tick"

    def perform(self, args: TickArgs) -> None:
        line = json.dumps({"job": self.job_id, "pid": os.getpid(), "at": time.time(), "label": args.label})
        with open(os.environ["UJ_SCHED_RECORD"], "a", encoding="utf-8") as f:
            f.write(line + "\n")


def create_app() -> Jobs:
    jobs = Jobs(Config.from_dict(json.loads(os.environ["UJ_SCHED_CONFIG"])))
    jobs.register(Tick)
    return jobs
