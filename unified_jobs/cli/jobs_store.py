"""``jobs show``, ``jobs failed`` and ``jobs discard``: one job, or the failed store, on every kind."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from unified_jobs.cli import Context
from unified_jobs.cli.jobs import jobs_group
from unified_jobs.core.job import JobInfo

__all__ = ["discard", "failed", "show"]


def _plain(info: JobInfo) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in asdict(info).items()}


@jobs_group.command()
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.pass_obj
def show(obj: Context, job_id: str, as_json: bool) -> None:
    """Everything the job store knows of one job: status, attempts, args, last error."""
    info = obj.jobs().job(job_id)
    if info is None:
        raise click.ClickException(f"no job {job_id} in the job store (never enqueued here, or expired)")
    if as_json:
        click.echo(json.dumps(_plain(info)))
        return
    for key, value in _plain(info).items():
        if key == "traceback" or value in (None, ""):
            continue
        click.echo(f"{key:>12}: {json.dumps(value) if key == 'args' else value}")
    if info.traceback:
        click.echo("\n" + info.traceback.rstrip())


@jobs_group.command()
@click.option("--worker", metavar="NAME", show_envvar=True, help="Only this worker's failed jobs.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, show_envvar=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line, for scripts.")
@click.pass_obj
def failed(obj: Context, worker: str | None, limit: int, as_json: bool) -> None:
    """The failed jobs, newest first (every kind)."""
    found = obj.jobs().failed(worker, limit)
    for info in found:
        if as_json:
            click.echo(json.dumps(_plain(info)))
        else:
            when = info.finished_at.isoformat(timespec="seconds") if info.finished_at else "-"
            click.echo(f"{info.id}  {info.worker}  attempts={info.attempts}  {when}  {info.last_error}")
    if not as_json:
        click.echo(f"{len(found)} failed job{'' if len(found) == 1 else 's'}")


@jobs_group.command()
@click.argument("job_id", metavar="ID")
@click.pass_obj
def discard(obj: Context, job_id: str) -> None:
    """Forget a failed or cancelled job."""
    if not obj.jobs().discard(job_id):
        raise click.ClickException(f"job {job_id} is not a failed or cancelled job")
    click.echo(f"discarded job {job_id}")
