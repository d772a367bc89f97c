"""``unified-jobs jobs schedules``: the app's recurring jobs, their last and next runs."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import click

from unified_jobs.cli import Context
from unified_jobs.cli.jobs import jobs_group
from unified_jobs.scheduler import Schedule, TickRecord

__all__ = ["schedules"]


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def _last(record: TickRecord | None) -> str:
    if record is None or record.last_tick is None:
        return "never"
    tick = _when(record.last_tick)
    if record.last_by is None:
        return f"never (counting from {tick})"
    if record.last_job_id is None:
        return f"{tick} skipped or in progress, by {record.last_by}"
    return f"{tick} by {record.last_by} (job {record.last_job_id})"


def _row(schedule: Schedule, record: TickRecord | None, now: datetime) -> dict[str, Any]:
    last = record.last_tick if record is not None else None
    next_run = schedule.next_run(last, now)
    return {
        "name": schedule.name,
        "worker": schedule.worker,
        "schedule": schedule.expression,
        "tags": list(schedule.tags),
        "missed": schedule.missed,
        "last_tick": _when(last) if last else None,
        "last_by": record.last_by if record is not None else None,
        "last_job_id": record.last_job_id if record is not None else None,
        "next_run": "now (due)" if next_run is None else _when(next_run),
    }


@jobs_group.command("schedules")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line, for scripts.")
@click.pass_obj
def schedules(obj: Context, as_json: bool) -> None:
    """The recurring jobs: name, worker, schedule, last run (tick, by which scheduler, job) and
    next run, from the schedule state every scheduler of the queue shares (in-process modes:
    this process' own, so nothing has run)."""
    jobs = obj.jobs()
    found = jobs.schedules
    if not found:
        click.echo("no schedules (add scheduler.jobs to the config, or call jobs.schedule(...))")
        return
    records = jobs.adapter.schedule_state().get(list(found))
    now = datetime.now(timezone.utc)
    rows = [(_row(s, records.get(name), now), records.get(name)) for name, s in found.items()]
    if as_json:
        for row, _ in rows:
            click.echo(json.dumps(row))
        return
    from rich.table import Table

    from unified_jobs.cli.jobs import _console

    table = Table("name", "worker", "schedule", "last run", "next run")
    for row, record in rows:
        table.add_row(row["name"], row["worker"], row["schedule"], _last(record), row["next_run"])
    _console().print(table)
