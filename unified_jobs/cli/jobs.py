"""``unified-jobs jobs ...``: look at and manage the queued jobs (Loco's ``jobs`` commands).

On the SQL queues (Postgres, Sqlite) the jobs table is the job store, and every command works.
Redis keeps only lists of queued messages: ``jobs list`` shows their lengths, and the other
commands say they need a job store. See docs/guides/managing-jobs.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click

from unified_jobs._uri import mask_uri
from unified_jobs.cli import Context, cli
from unified_jobs.config import DEFAULT_ENV, ENV_VAR, QueueConfig
from unified_jobs.errors import UnifiedJobsError
from unified_jobs.jobs import Jobs

if TYPE_CHECKING:
    from unified_jobs.adapters.celery.kinds import QueueKind
    from unified_jobs.adapters.sql.store import JobCounts, JobStore, Progress

__all__ = ["jobs_group"]

FC = TypeVar("FC", bound=Callable[..., Any])

#: ``jobs retry --all-failed`` on a kind without a job table enqueues at most this many.
RETRY_ALL_LIMIT = 100_000

#: Every status a job row can have (Loco's names); ``schema.STATUSES`` without importing SQLAlchemy.
STATUSES = ("queued", "processing", "completed", "failed", "cancelled")
#: Operations on at least this many rows show a progress bar (on stderr).
PROGRESS_MIN_ROWS = 1000


def _statuses(_ctx: click.Context, _param: click.Parameter, value: Sequence[str]) -> list[str]:
    """``--status`` is repeatable and takes comma lists: ``--status failed,cancelled``."""
    out = [s.strip().lower() for v in value for s in v.split(",") if s.strip()]
    unknown = [s for s in out if s not in STATUSES]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: the statuses are {', '.join(STATUSES)}")
    return list(dict.fromkeys(out))


def status_option(default: str | None, help_text: str) -> Callable[[FC], FC]:
    return click.option(
        "--status",
        multiple=True,
        default=[default] if default else [],
        show_default=default,
        callback=_statuses,
        show_envvar=True,
        metavar="LIST",
        help=f"{help_text} Repeatable, or comma-separated ({', '.join(STATUSES)}).",
    )


def _where(queue: QueueConfig) -> str:
    return f"{queue.kind} queue at {mask_uri(queue.uri)}"


def _queue_of(jobs: Jobs, command: str) -> QueueConfig:
    """The app's queue config; a clear error outside BackgroundQueue mode."""
    mode, queue = jobs.config.workers.mode, jobs.config.queue
    if mode != "BackgroundQueue" or queue is None:
        env = os.environ.get(ENV_VAR) or DEFAULT_ENV
        raise UnifiedJobsError(
            f"`jobs {command}` manages a queue, but the app runs in mode {mode} (workers.mode in "
            f"config/{env}.yaml), which keeps no queue: its jobs run in-process and are not stored. "
            "Set workers.mode: BackgroundQueue with a queue: section (Redis, Postgres, Sqlite or RabbitMQ)"
        )
    return queue


def _store(obj: Context, command: str) -> JobStore:
    """The job table of the app's queue; a clear error if its kind keeps none, or outside
    BackgroundQueue."""
    queue = _queue_of(obj.jobs(), command)
    table: JobStore | None = _kind(obj.jobs()).job_table()
    if table is None:
        raise UnifiedJobsError(
            f"`jobs {command}` needs a job table: a Postgres or Sqlite queue (queue.kind). This app's "
            f"queue is {queue.kind} ({mask_uri(queue.uri)}), which keeps only lists of queued messages, "
            "no job records to change; `jobs list` shows their lengths"
        )
    return table


def _kind(jobs: Jobs) -> QueueKind:
    """The queue kind's plug-in (call ``_queue_of`` first: it says why there is none)."""
    kind = jobs.celery_bridge().kind
    assert kind is not None
    return kind


def _unknown_worker_note(obj: Context, name: str | None, matched: int) -> None:
    """A typo in --name/--worker matches nothing silently; say so when no worker has the name."""
    workers = obj.jobs().workers
    if name is not None and not matched and name not in workers:
        known = ", ".join(sorted(workers)) or "none"
        click.echo(f"note: no registered worker is named {name!r} (registered: {known})", err=True)


def _console() -> Any:
    """A rich console on stdout; piped output gets wide tables rather than folded cells."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200
    return console


@contextmanager
def _progress(description: str, total: int) -> Iterator[Progress]:
    """A rich progress bar on stderr when ``total`` is large; else a no-op callback."""
    if total < PROGRESS_MIN_ROWS:
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _plural(n: int, what: str = "job") -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


class _JobsGroup(click.Group):
    """The ``jobs`` commands: a queue server that is down, does not answer or refuses the login
    is one line naming it (see ``cli/_faults.py``), not the driver's traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            fault = _fault_of_server(ctx, exc)
            if fault is None:
                raise
            raise fault from exc


def _fault_of_server(ctx: click.Context, exc: Exception) -> UnifiedJobsError | None:
    from unified_jobs.cli._faults import server_fault

    obj = ctx.find_object(Context)
    jobs = obj._jobs if obj is not None else None
    if jobs is None or jobs.config.queue is None or isinstance(exc, UnifiedJobsError):
        return None
    return server_fault(exc, jobs.config.queue)


@cli.group("jobs", cls=_JobsGroup)
def jobs_group() -> None:
    """Look at and manage the queue's jobs.

    Every command works on the Postgres and Sqlite queues, whose jobs table is the job
    store. On Redis and RabbitMQ, `list` (queue lengths), `purge --status queued --max-age 0`,
    `show`, `failed`, `discard` and `retry ID` and `cancel ID` work (every kind has them).
    Options also read
    UNIFIED_JOBS_JOBS_<COMMAND>_<OPTION> (e.g. UNIFIED_JOBS_JOBS_PURGE_MAX_AGE).
    """


# --- list -----------------------------------------------------------------------------------


@jobs_group.command("list")
@status_option(None, "Only jobs with this status [default: all].")
@click.option("--worker", metavar="NAME", show_envvar=True, help="Only jobs of this worker (its name).")
@click.option("--jobs", is_flag=True, show_envvar=True, help="Also list the jobs one by one.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    show_envvar=True,
    help="With --jobs: the newest this many.",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    show_envvar=True,
    help="A table, or one JSON object for scripts.",
)
@click.pass_obj
def list_jobs(
    obj: Context, status: list[str], worker: str | None, jobs: bool, limit: int, output: str
) -> None:
    """Count the jobs by queue and status; --jobs lists them too.

    "delayed" counts the queued jobs whose run_at is still ahead. On Redis: the length of
    each of the app's queues (all priority levels) and the jobs workers have reserved. On
    RabbitMQ: the same, and the jobs waiting in the delay queues (of the whole vhost).
    """
    queue = _queue_of(obj.jobs(), "list")
    if _kind(obj.jobs()).job_table() is None:
        if status or worker or jobs:
            raise UnifiedJobsError(
                "--status, --worker and --jobs need a job table (a Postgres or Sqlite queue); "
                f"on {queue.kind} `jobs list` shows queue lengths only"
            )
        _list_lengths(obj.jobs(), queue, output)
        return
    store = _store(obj, "list")
    counts = store.counts(status, worker)
    rows = store.recent(status, worker, limit) if jobs else []
    if output == "json":
        data: dict[str, Any] = {"kind": queue.kind, "counts": counts.by_queue, "delayed": counts.delayed}
        if jobs:
            data["jobs"] = [asdict(r) for r in rows]
        click.echo(json.dumps(data, indent=2, default=datetime.isoformat))
        return
    _counts_table(queue, counts, status or list(STATUSES))
    if jobs:
        _jobs_table(rows, limit)
    _unknown_worker_note(obj, worker, sum(sum(c.values()) for c in counts.by_queue.values()))


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _counts_table(queue: QueueConfig, counts: JobCounts, statuses: list[str]) -> None:
    from rich.table import Table

    table = Table()
    table.add_column("queue")
    for status in statuses:
        table.add_column(status, justify="right")
        if status == "queued":
            table.add_column("delayed", justify="right")
    table.add_column("total", justify="right")
    for name, by_status in sorted(counts.by_queue.items()):
        cells = []
        for status in statuses:
            cells.append(str(by_status.get(status, 0)))
            if status == "queued":
                cells.append(str(counts.delayed.get(name, 0)))
        table.add_row(name, *cells, str(sum(by_status.values())))
    if len(counts.by_queue) > 1:
        cells = []
        for status in statuses:
            cells.append(str(counts.total(status)))
            if status == "queued":
                cells.append(str(sum(counts.delayed.values())))
        total = sum(sum(c.values()) for c in counts.by_queue.values())
        table.add_row("(all)", *cells, str(total), style="bold")
    console = _console()
    if not counts.by_queue:
        console.print(f"No jobs match in the {_where(queue)}.", highlight=False, soft_wrap=True)
        return
    console.print(f"Jobs in the {_where(queue)}:", highlight=False, soft_wrap=True)
    console.print(table)


def _jobs_table(rows: list[Any], limit: int) -> None:
    from rich.table import Table

    table = Table()
    for name in ("id", "worker", "queue", "status", "priority", "run_at", "attempts", "last_error"):
        table.add_column(name, justify="right" if name in ("id", "priority", "attempts") else "left")
    for r in rows:
        error = (r.last_error or "").splitlines()[0][:80] if r.last_error else ""
        table.add_row(
            str(r.id),
            r.worker or "?",
            r.queue,
            r.status,
            str(r.priority),
            _when(r.run_at),
            str(r.attempts),
            error,
        )
    console = _console()
    shown = f"the newest {len(rows)}" if len(rows) == limit else f"all {len(rows)}"
    console.print(f"Matching jobs, {shown}, newest first (times UTC):", highlight=False)
    console.print(table)


def _list_lengths(jobs: Jobs, queue: QueueConfig, output: str) -> None:
    queued, reserved = _kind(jobs).queue_lengths(jobs.celery, jobs.celery_bridge().worker_queues())
    if output == "json":
        counts = {name: {"queued": n, "reserved": reserved.get(name, 0)} for name, n in queued.items()}
        click.echo(json.dumps({"kind": queue.kind, "counts": counts}, indent=2))
        return
    from rich.table import Table

    table = Table()
    table.add_column("queue")
    table.add_column("queued", justify="right")
    table.add_column("reserved", justify="right")
    for name, n in queued.items():
        table.add_row(name, str(n), str(reserved.get(name, 0)))
    console = _console()
    console.print(
        f"Queues in the {_where(queue)} (reserved: taken by a worker, not yet acked):",
        highlight=False,
        soft_wrap=True,
    )
    console.print(table)


# --- changes --------------------------------------------------------------------------------


@jobs_group.command()
@click.argument("job_id", required=False, metavar="[ID]")
@click.option(
    "--name", metavar="WORKER", show_envvar=True, help="Every queued job of this worker (SQL kinds)."
)
@click.pass_obj
def cancel(obj: Context, job_id: str | None, name: str | None) -> None:
    """Cancel one job by ID (every kind), or the queued jobs of a worker (--name).

    A waiting job becomes `cancelled` and never runs; a running one is asked to stop (its
    worker polls for requests every second) and ends `cancelled`.
    """
    if (job_id is None) == (name is None):
        raise click.UsageError("give a job ID or --name WORKER (one of them)")
    if job_id is not None:
        ok = obj.jobs().cancel(job_id)
        click.echo(f"cancelled job {job_id}" if ok else f"job {job_id} is not waiting or running here")
        if not ok:
            raise SystemExit(1)
        return
    assert name is not None
    n = _store(obj, "cancel").cancel(name)
    click.echo(f"cancelled {_plural(n)} of {name}")
    _unknown_worker_note(obj, name, n)


@jobs_group.command()
@click.option(
    "--from-age",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    show_envvar=True,
    metavar="MINUTES",
    help="Only jobs in processing for at least this long.",
)
@click.pass_obj
def requeue(obj: Context, from_age: float) -> None:
    """Put stuck `processing` jobs back to `queued`.

    A job is stuck when it was claimed at least MINUTES ago and its lease is no longer
    renewed (its worker died or froze). Jobs whose worker still renews the lease are
    running, and are left alone. Workers also do this on their own when a lease expires.
    """
    n = _store(obj, "requeue").requeue_stuck(timedelta(minutes=from_age))
    click.echo(f"requeued {_plural(n)} stuck in processing for {from_age:g} min or more")


@jobs_group.command()
@click.argument("job_id", required=False, metavar="[ID]")
@click.option("--all-failed", is_flag=True, help="Every failed job (the default without an ID).")
@click.option("--name", metavar="WORKER", show_envvar=True, help="Only this worker's jobs.")
@click.pass_obj
def retry(obj: Context, job_id: str | None, all_failed: bool, name: str | None) -> None:
    """Enqueue one failed job again by ID, or every `failed` job (of a worker, with --name).

    Attempts start over. On the SQL kinds the rows go back to `queued` in one statement (the
    last error kept); on Redis each failed job of the failed store is enqueued again.
    """
    if job_id is not None:
        if all_failed or name:
            raise click.UsageError("give a job ID, or --all-failed / --name, not both")
        ok = obj.jobs().retry(job_id)
        click.echo(f"enqueued job {job_id} again" if ok else f"job {job_id} is not a failed job")
        if not ok:
            raise SystemExit(1)
        return
    jobs = obj.jobs()
    _queue_of(jobs, "retry")
    if _kind(jobs).job_table() is None:  # one by one, from the kind's failed store
        n = sum(jobs.retry(info.id) for info in jobs.failed(name, limit=RETRY_ALL_LIMIT))
    else:
        n = _store(obj, "retry").retry(name)
    click.echo(f"requeued {_plural(n, 'failed job')}{f' of {name}' if name else ''}")
    _unknown_worker_note(obj, name, n)


@jobs_group.command()
@click.pass_obj
def tidy(obj: Context) -> None:
    """Delete the `completed` and `cancelled` jobs."""
    n = _store(obj, "tidy").tidy()
    click.echo(f"deleted {_plural(n)} (completed and cancelled)")
