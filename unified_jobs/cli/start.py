"""``unified-jobs start``: run a worker process (and, later, the web server with it)."""

from __future__ import annotations

import logging
import sys

import click

from unified_jobs.cli import Context, cli
from unified_jobs.errors import UnifiedJobsError
from unified_jobs.jobs import Jobs

logger = logging.getLogger(__name__)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--worker", "-w", is_flag=True, help="Run a worker process consuming the app's queues.")
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    metavar="NAME",
    help="Consume this queue (repeatable; default: every queue of the registered workers).",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAG",
    help="Consume the queues of the workers with this tag (repeatable).",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs run at once [default: workers.concurrency, or queue.num_workers].",
)
@click.option(
    "--pool",
    "-P",
    type=click.Choice(["prefork", "threads", "solo"]),
    default="prefork",
    show_default=True,
    help="How jobs run: child processes, threads, or in the main thread.",
)
@click.option("--loglevel", "-l", default="INFO", show_default=True, help="Log level of the worker.")
@click.option("--hostname", "-n", default=None, help="Worker node name (Celery's --hostname).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- CELERY WORKER OPTIONS]")
@click.pass_obj
def start(
    obj: Context,
    worker: bool,
    queues: tuple[str, ...],
    tags: tuple[str, ...],
    concurrency: int | None,
    pool: str,
    loglevel: str,
    hostname: str | None,
    celery_args: tuple[str, ...],
) -> None:
    """Start a worker (-w).

    The worker is a Celery worker for the app's Celery app: SIGTERM (or Ctrl-C) is a warm
    shutdown: jobs in progress finish, and jobs it had reserved go back to the queue.
    Options after `--` go to `celery worker` as they are (e.g. `-- --prefetch-multiplier 1`).
    """
    if not worker:
        raise click.UsageError("say what to start: --worker (-w)")
    jobs = obj.jobs()
    run_worker(
        jobs,
        queues=queues,
        tags=tags,
        concurrency=concurrency,
        pool=pool,
        loglevel=loglevel,
        hostname=hostname,
        celery_args=celery_args,
    )


def select_queues(jobs: Jobs, queues: tuple[str, ...], tags: tuple[str, ...]) -> list[str]:
    """The queues to consume: the ones named, plus those of workers with a given tag."""
    if tags:
        tagged = [w for w in jobs.workers.values() if set(w.tags) & set(tags)]
        if not tagged:
            known = sorted({t for w in jobs.workers.values() for t in w.tags})
            raise UnifiedJobsError(
                f"no registered worker has tag {', '.join(tags)} (tags in use: {', '.join(known) or 'none'})"
            )
        queues = (*queues, *(w.queue for w in tagged))
    if not queues:
        return jobs.celery_bridge().worker_queues()
    return list(dict.fromkeys(queues))


def run_worker(
    jobs: Jobs,
    *,
    queues: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    concurrency: int | None = None,
    pool: str = "prefork",
    loglevel: str = "INFO",
    hostname: str | None = None,
    celery_args: tuple[str, ...] = (),
) -> None:
    if jobs.mode != "BackgroundQueue":
        where = "in the calling thread" if jobs.mode == "ForegroundBlocking" else "inside your app's process"
        raise UnifiedJobsError(
            f"workers.mode is {jobs.mode}: jobs run {where}, so there is no queue for a worker to consume; "
            "set workers.mode: BackgroundQueue (with a queue: section) to use worker processes"
        )
    assert jobs.config.queue is not None
    selected = select_queues(jobs, queues, tags)
    if jobs.config.queue.dangerously_flush:
        from unified_jobs.adapters.celery_app import flush_queues

        flushed = flush_queues(jobs.celery, selected)
        click.echo(f"dangerously_flush: deleted {flushed} queued job(s) from {', '.join(selected)}", err=True)
    concurrency = concurrency or jobs.config.queue.num_workers or jobs.config.workers.concurrency
    argv = [
        "worker",
        "--queues",
        ",".join(selected),
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--loglevel",
        loglevel,
    ]
    if hostname:
        argv += ["--hostname", hostname]
    argv += list(celery_args)
    jobs.celery.worker_main(argv=argv)
    sys.exit(0)
