"""``unified-jobs start``: a worker process (``-w``), or the web server and the workers in one
process (``-s``)."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import click

from unified_jobs.cli import Context, cli
from unified_jobs.errors import MissingDependencyError, UnifiedJobsError
from unified_jobs.jobs import Jobs

logger = logging.getLogger(__name__)


@cli.command()
@click.option("--worker", "-w", is_flag=True, help="Run a worker process consuming the app's queues.")
@click.option(
    "--server-and-worker",
    "-s",
    "server_and_worker",
    is_flag=True,
    help="Run the app's ASGI server (uvicorn) and the job workers in this one process.",
)
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
    help="Consume the queues of the workers with this tag (repeatable). Tags select queues: "
    "give tagged workers their own queue.",
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
    help="-w: how jobs run: child processes, threads, or in the main thread.",
)
@click.option("--loglevel", "-l", default="INFO", show_default=True, help="Log level.")
@click.option("--hostname", "-n", default=None, help="-w: worker node name (Celery's --hostname).")
@click.option("--server", "server_app", metavar="MODULE:ATTR", help="-s: the ASGI app [default: server.app].")
@click.option("--binding", "-b", "host", default=None, help="-s: address to bind [default: server.host].")
@click.option(
    "--port", "-p", type=click.IntRange(0, 65535), default=None, help="-s: port [default: server.port]."
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- CELERY WORKER OPTIONS]")
@click.pass_obj
def start(
    obj: Context,
    worker: bool,
    server_and_worker: bool,
    queues: tuple[str, ...],
    tags: tuple[str, ...],
    concurrency: int | None,
    pool: str,
    loglevel: str,
    hostname: str | None,
    server_app: str | None,
    host: str | None,
    port: int | None,
    celery_args: tuple[str, ...],
) -> None:
    """Start a worker (-w), or the web server with the workers in the same process (-s).

    -w is a Celery worker for the app's Celery app: SIGTERM (or Ctrl-C) is a warm shutdown:
    jobs in progress finish, and jobs it had reserved go back to the queue. Options after
    `--` go to `celery worker` as they are (e.g. `-- --prefetch-multiplier 1`).

    -s serves the ASGI app under uvicorn; jobs run in the in-process pool (BackgroundAsync) or
    in an embedded worker consuming the queue (BackgroundQueue). Ctrl-C / SIGTERM stops both:
    the server stops taking requests, then jobs in progress finish.
    """
    if celery_args and not click.get_current_context().meta.get("unified_jobs.passthrough"):
        raise click.UsageError(
            f"unexpected argument {celery_args[0]!r}; options for `celery worker` go after `--`, "
            "e.g. unified-jobs start --worker -- --prefetch-multiplier 1"
        )
    if worker == server_and_worker:
        raise click.UsageError("say what to start: --worker (-w) or --server-and-worker (-s)")
    jobs = obj.jobs()
    if worker:
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
    else:
        run_server_and_worker(
            jobs,
            server_app=server_app,
            host=host,
            port=port,
            queues=queues,
            tags=tags,
            concurrency=concurrency,
            loglevel=loglevel,
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
        # A worker process consumes queues, not workers: say who else it will run.
        others = sorted(w.name for w in jobs.workers.values() if w not in tagged and w.queue in queues)
        if others:
            click.echo(
                f"note: --tag {', '.join(tags)} consumes queue(s) {', '.join(dict.fromkeys(queues))}, which "
                f"untagged workers use too; this process runs their jobs as well: {', '.join(others)}. "
                "Give tagged workers a queue of their own to keep them apart.",
                err=True,
            )
    if not queues:
        return jobs.celery_bridge().worker_queues()
    return list(dict.fromkeys(queues))


def _worker_concurrency(jobs: Jobs, concurrency: int | None) -> int:
    num_workers = jobs.config.queue.num_workers if jobs.config.queue else None
    return concurrency or num_workers or jobs.config.workers.concurrency


def _flush_if_asked(jobs: Jobs, queues: list[str]) -> None:
    assert jobs.config.queue is not None
    if jobs.config.queue.dangerously_flush:
        kind = jobs.celery_bridge().kind
        assert kind is not None
        flushed = sum(kind.purge_queues(jobs.celery, queues).values())
        click.echo(f"dangerously_flush: deleted {flushed} queued job(s) from {', '.join(queues)}", err=True)


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
    """Run a Celery worker for the app in the foreground (what ``start --worker`` does)."""
    if jobs.mode != "BackgroundQueue":
        where = "in the calling thread" if jobs.mode == "ForegroundBlocking" else "inside your app's process"
        raise UnifiedJobsError(
            f"workers.mode is {jobs.mode}: jobs run {where}, so there is no queue for a worker to consume; "
            "set workers.mode: BackgroundQueue (with a queue: section) to use worker processes"
        )
    selected = select_queues(jobs, queues, tags)
    _flush_if_asked(jobs, selected)
    argv = [
        "worker",
        "--queues",
        ",".join(selected),
        "--concurrency",
        str(_worker_concurrency(jobs, concurrency)),
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


def run_server_and_worker(
    jobs: Jobs,
    *,
    server_app: str | None = None,
    host: str | None = None,
    port: int | None = None,
    queues: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    concurrency: int | None = None,
    loglevel: str = "INFO",
) -> None:
    """Serve the ASGI app with uvicorn, and run the jobs in this process too."""
    try:
        import uvicorn
    except ImportError:
        raise MissingDependencyError(
            "start --server-and-worker needs uvicorn: pip install 'unified-jobs[server]'"
        ) from None
    from unified_jobs.cli._app import import_string

    spec = server_app or jobs.config.server.app
    if not spec:
        raise UnifiedJobsError(
            "no ASGI app to serve: pass --server module:attribute, "
            "or set server: {app: 'myapp.web:app'} in the config"
        )
    asgi = import_string(spec, what="--server")
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    embedded = None
    if jobs.mode == "BackgroundQueue":
        from unified_jobs.adapters.celery.embedded import EmbeddedWorker

        selected = select_queues(jobs, queues, tags)
        _flush_if_asked(jobs, selected)
        embedded = EmbeddedWorker(jobs, concurrency=_worker_concurrency(jobs, concurrency), queues=selected)
        embedded.start()
    elif jobs.mode != "BackgroundAsync":
        logger.warning("workers.mode is %s: jobs run inline, in the request that enqueues them", jobs.mode)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # uvicorn re-raises the signal after serving, which would kill the process before
            # the jobs are drained; stop serving and let the code below finish the jobs.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    server = Server(
        uvicorn.Config(
            asgi,
            host=host or jobs.config.server.host,
            port=jobs.config.server.port if port is None else port,
            log_level=loglevel.lower(),
        )
    )
    try:
        server.run()  # returns on Ctrl-C / SIGTERM, once requests in flight are done
    finally:
        logger.info("server stopped; finishing jobs")
        if embedded is not None:
            embedded.stop()
        jobs.shutdown(wait=True, timeout=jobs.config.workers.shutdown_timeout)
    if not server.started:
        raise UnifiedJobsError(
            f"the server did not start on {server.config.host}:{server.config.port} (see the log above)"
        )
