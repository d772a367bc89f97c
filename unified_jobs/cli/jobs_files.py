"""``jobs purge``, ``jobs dump`` and ``jobs import``: the job table to and from dump files."""

from __future__ import annotations

import json
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from unified_jobs.cli import Context
from unified_jobs.cli.jobs import (
    _kind,
    _plural,
    _progress,
    _queue_of,
    _store,
    _where,
    jobs_group,
    status_option,
)
from unified_jobs.errors import UnifiedJobsError

if TYPE_CHECKING:
    from unified_jobs.adapters.sql.store import Progress
    from unified_jobs.adapters.sql.store_dump import DumpedJob, JobCheck
    from unified_jobs.config import QueueConfig
    from unified_jobs.jobs import Jobs

__all__ = ["dump", "import_", "purge"]


@jobs_group.command()
@click.option(
    "--max-age",
    type=click.FloatRange(min=0),
    default=90,
    show_default=True,
    show_envvar=True,
    metavar="DAYS",
    help="Only jobs last updated at least this long ago (0: all).",
)
@status_option("completed,failed,cancelled", "Only jobs with this status.")
@click.option(
    "--dump",
    type=click.Path(file_okay=False, path_type=Path),
    show_envvar=True,
    metavar="DIR",
    help="First write the jobs to a dump file in DIR (see `jobs dump`).",
)
@click.pass_obj
def purge(obj: Context, max_age: float, status: list[str], dump: Path | None) -> None:
    """Delete old jobs: with these statuses, last updated more than --max-age days ago.

    On the Redis and RabbitMQ queues, which keep messages and no job table, `--status queued
    --max-age 0` deletes the messages waiting in the app's queues and says how many each had.
    """
    from unified_jobs.adapters.sql.store import utcnow
    from unified_jobs.adapters.sql.store_dump import purge_jobs

    queue = _queue_of(obj.jobs(), "purge")  # a clear error outside BackgroundQueue
    if _kind(obj.jobs()).job_table() is None:
        _purge_messages(obj, queue, max_age, status, dump)
        return
    store = _store(obj, "purge")
    cutoff = utcnow() - timedelta(days=max_age)
    total = store.count_matching(status, None, cutoff)
    steps = total * (2 if dump is not None else 1)
    with _progress("purging", steps) as progress:
        result = purge_jobs(store, status, cutoff, dump, progress)
    if result.dump_file is not None:
        click.echo(f"dumped {_plural(result.dumped)} to {result.dump_file}")
    deleted = result.deleted
    click.echo(f"deleted {_plural(deleted)} ({', '.join(status)}) last updated {max_age:g} days ago or more")


def _purge_messages(
    obj: Context, queue: QueueConfig, max_age: float, status: list[str], dump: Path | None
) -> None:
    jobs = obj.jobs()
    if status != ["queued"] or max_age != 0 or dump is not None:
        raise UnifiedJobsError(
            f"on {queue.kind} `jobs purge` deletes queued jobs only, all of them: run `jobs purge "
            f"--status queued --max-age 0`. The {queue.kind} queue keeps messages, not job rows "
            "(--dump and the other statuses need a Postgres or Sqlite queue); finished jobs are in "
            "the job store, where completed and cancelled ones expire after workers.keep_completed "
            "and failed ones stay until `jobs discard`"
        )
    purged = _kind(jobs).purge_queues(jobs.celery, jobs.celery_bridge().worker_queues())
    counts = ", ".join(f"{name}: {n}" for name, n in purged.items())
    click.echo(f"deleted {_plural(sum(purged.values()))} (queued) from the {_where(queue)} ({counts})")


@jobs_group.command()
@status_option(None, "Only jobs with this status [default: all].")
@click.option("--worker", metavar="NAME", show_envvar=True, help="Only jobs of this worker.")
@click.option(
    "--folder",
    "-f",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    show_envvar=True,
    metavar="DIR",
    help="Where to write unified-jobs-dump-<timestamp>.jsonl.",
)
@click.pass_obj
def dump(obj: Context, status: list[str], worker: str | None, folder: Path) -> None:
    """Write jobs to a JSON-lines file that `jobs import` reads back.

    One job per line, with every field: the whole Celery message (payload), worker,
    queue, priority, tags, run_at, status, attempts, last_error, created_at, updated_at.
    The jobs stay in the queue.
    """
    from unified_jobs.adapters.sql.store_dump import dump_jobs

    store = _store(obj, "dump")
    total = store.count_matching(status, worker)
    with _progress("dumping", total) as progress:
        path, written = dump_jobs(store, folder, status, worker, None, progress)
    click.echo(f"dumped {_plural(written)} to {path}")


@jobs_group.command("import")
@click.option(
    "--file",
    "-f",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    show_envvar=True,
    metavar="PATH",
    help="A dump file written by `jobs dump` or `jobs purge --dump`.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    show_envvar=True,
    help="Check the whole file and say what would be imported (jobs per worker and queue); import nothing.",
)
@click.pass_obj
def import_(obj: Context, file: Path, dry_run: bool) -> None:
    """Enqueue every job of a dump file again, as `queued`.

    Each job keeps its worker, queue, priority, tags, payload (arguments) and Celery task
    id, and gets a new row: attempts 0, no last error, run_at kept if still ahead, else
    now. The whole file is checked before anything is enqueued: each job's worker must be
    registered with the app (or be a task of its adopted Celery app; Celery's own celery.*
    tasks are refused), its arguments must validate, its queue fit the jobs table, its
    priority be 0-9 and its times be real dates. A bad line is an error naming it, and
    nothing is imported.
    """
    from unified_jobs.adapters.sql.store_dump import DumpError, check_dump, import_jobs

    store = _store(obj, "import")
    check = _import_check(obj.jobs())
    if dry_run:
        try:
            found = check_dump(file, check)
        except DumpError as exc:
            raise UnifiedJobsError(f"cannot import {file}: {exc}; nothing would be imported") from None
        click.echo(f"{file} is fine: {_plural(sum(found.values()))} would be imported as queued")
        for (worker, queue), n in sorted(found.items()):
            click.echo(f"  {n:>7}  {worker}  (queue {queue})")
        click.echo("dry run: nothing was imported")
        return
    with ExitStack() as stack:
        advance: list[Progress] = [lambda _n: None]

        def checked(total: int) -> None:  # the bar starts once the file is checked
            advance[0] = stack.enter_context(_progress("importing", total))

        try:
            n = import_jobs(store, file, lambda k: advance[0](k), checked, check)
        except DumpError as exc:
            raise UnifiedJobsError(f"cannot import {file}: {exc}; nothing was imported") from None
    click.echo(f"imported {_plural(n)} from {file} as queued")


def _import_check(jobs: Jobs) -> JobCheck:
    """What the app can run: a registered Worker with arguments that validate (keyword
    arguments only), or a task of the Celery app it adopted, not one of Celery's own."""
    from pydantic import ValidationError

    from unified_jobs.core.job import load_args

    bridge = jobs.celery_bridge()
    tasks = bridge.app.tasks if bridge.adopted else {}
    workers = jobs.workers

    def check(job: DumpedJob) -> None:
        worker = workers.get(job.worker)
        if worker is None:
            if job.worker.startswith("celery."):
                raise ValueError(
                    f"worker {job.worker!r} is one of Celery's own tasks, which are never imported"
                )
            if job.worker in tasks:
                return
            known = ", ".join(sorted(workers)) or "none"
            adopted = " or a task of its Celery app" if bridge.adopted else ""
            raise ValueError(
                f"worker {job.worker!r} is not a worker registered with this app{adopted} "
                f"(registered: {known})"
            )
        if job.body_error is not None:
            raise ValueError(f"{job.worker}: {job.body_error}")
        if job.args:
            raise ValueError(f"{job.worker} takes keyword arguments only, not the positional {job.args!r}")
        try:
            load_args(worker.args_model, json.dumps(job.kwargs))
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"the arguments of {job.worker} do not validate: {errors}") from None

    return check
