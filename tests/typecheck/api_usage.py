"""The public API as users write it; `make type` (mypy --strict) checks this file too.

It is never run: it exists so that a change that breaks users' type checking fails CI.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pydantic import BaseModel

from unified_jobs import Config, JobHandle, Jobs, Worker
from unified_jobs.errors import EnqueueError, NotRegisteredError, UnifiedJobsError


class ReportArgs(BaseModel):
    user_id: int


class ReportWorker(Worker[ReportArgs]):
    queue = "reports"
    tags = ("reports",)

    def perform(self, args: ReportArgs) -> None:
        assert args.user_id >= 0
        assert self.job_id is None or isinstance(self.job_id, str)


class AsyncReportWorker(Worker[ReportArgs]):
    async def perform(self, args: ReportArgs) -> None:
        return None


def usage() -> list[JobHandle]:
    jobs = Jobs(Config.from_dict({"workers": {"mode": "ForegroundBlocking"}}), context={"db": None})
    jobs.register(ReportWorker)

    @jobs.register
    class Inline(Worker[ReportArgs]):
        def perform(self, args: ReportArgs) -> None: ...

    handles = [
        ReportWorker.perform_later(ReportArgs(user_id=1)),
        ReportWorker.perform_later({"user_id": 2}, wait=timedelta(minutes=5)),
        ReportWorker.perform_later({"user_id": 3}, run_at=datetime.now(timezone.utc), priority=9, queue="q"),
        jobs.perform_later(Inline, ReportArgs(user_id=4)),
        *ReportWorker.perform_all_later([{"user_id": 5}, ReportArgs(user_id=6)]),
    ]
    ids: list[str] = [h.id for h in handles]
    assert all(ids)
    try:
        jobs.celery.send_task("reports.ReportWorker", kwargs={"user_id": 7})  # the real Celery app
    except EnqueueError as exc:
        raise UnifiedJobsError("broker down") from exc
    except NotRegisteredError:
        raise
    jobs.shutdown(wait=True, timeout=5.0)
    return handles


async def async_usage() -> JobHandle:
    return await AsyncReportWorker.aperform_later({"user_id": 1})
