"""``unified-jobs start``: a worker process (``-w``), the web server and the workers in one
process (``-s``), or a process that only runs the schedules (``--scheduler``). Worker processes
(``-w``, ``-s``) run a scheduler thread too, unless ``--no-scheduler``, and serve Prometheus
metrics with ``--metrics-port`` (``-w``: summed over its pool processes, in prometheus-client's
multiprocess mode)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

import click

from unified_jobs.cli import Context, cli
from unified_jobs.errors import MissingDependencyError, UnifiedJobsError
from unified_jobs.jobs import Jobs
from unified_jobs.scheduler import identity

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
    "--scheduler",
    "scheduler_only",
    is_flag=True,
    help="Run a process that only enqueues the app's recurring jobs, each tick once however many "
    "schedulers run (--tag: only the schedules with that tag).",
)
@click.option(
    "--no-scheduler",
    "no_scheduler",
    is_flag=True,
    help="-w/-s: do not run a scheduler thread in this process (by default each worker process "
    "runs one; they share the schedule state, so each tick is enqueued once).",
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
    "give tagged workers their own queue. With --scheduler: run only the schedules with this tag.",
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
    type=click.Choice(["prefork", "processes", "threads", "solo"]),
    default="prefork",
    show_default=True,
    help="-w: how jobs run: child processes fed by this one (Celery's prefork); processes that "
    "each take and run their own jobs, under this one (faster; one Celery node per process); "
    "threads; or in the main thread.",
)
@click.option("--loglevel", "-l", default="INFO", show_default=True, help="Log level.")
@click.option("--hostname", "-n", default=None, help="-w: worker node name (Celery's --hostname).")
@click.option("--server", "server_app", metavar="MODULE:ATTR", help="-s: the ASGI app [default: server.app].")
@click.option("--binding", "-b", "host", default=None, help="-s: address to bind [default: server.host].")
@click.option(
    "--port", "-p", type=click.IntRange(0, 65535), default=None, help="-s: port [default: server.port]."
)
@click.option(
    "--metrics-port",
    "metrics_port",
    type=click.IntRange(0, 65535),
    default=None,
    metavar="PORT",
    help="-w/-s: serve Prometheus metrics at http://ADDR:PORT/metrics from this process (-w: summed "
    "over its pool processes). Needs the metrics extra.",
)
@click.option(
    "--metrics-binding",
    "metrics_binding",
    default="127.0.0.1",
    show_default=True,
    metavar="ADDR",
    help="-w/-s: address the metrics server binds (0.0.0.0: every interface).",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- CELERY WORKER OPTIONS]")
@click.pass_obj
def start(
    obj: Context,
    worker: bool,
    server_and_worker: bool,
    scheduler_only: bool,
    no_scheduler: bool,
    queues: tuple[str, ...],
    tags: tuple[str, ...],
    concurrency: int | None,
    pool: str,
    loglevel: str,
    hostname: str | None,
    server_app: str | None,
    host: str | None,
    port: int | None,
    metrics_port: int | None,
    metrics_binding: str,
    celery_args: tuple[str, ...],
) -> None:
    """Start a worker (-w), or the web server with the workers in the same process (-s).

    -w is a Celery worker for the app's Celery app: SIGTERM (or Ctrl-C) is a warm shutdown:
    jobs in progress finish, and jobs it had reserved go back to the queue at once, not run.
    On Linux a SIGTERM to its whole process group is a warm shutdown too. With
    workers.stop_grace, running jobs get that many seconds; then it stops cold and they go
    back to the queue (as after a second Ctrl-C or SIGQUIT). Options after
    `--` go to `celery worker` as they are (e.g. `-- --prefetch-multiplier 1`).

    -s serves the ASGI app under uvicorn; jobs run in the in-process pool (BackgroundAsync) or
    in an embedded worker consuming the queue (BackgroundQueue). Ctrl-C / SIGTERM stops both:
    the server stops taking requests, then jobs in progress finish.

    --scheduler only enqueues the recurring jobs (scheduler.jobs and jobs.schedule); -w and -s
    run a scheduler thread as well unless --no-scheduler. Any number may run: each tick is
    enqueued once.
    """
    if celery_args and not click.get_current_context().meta.get("unified_jobs.passthrough"):
        raise click.UsageError(
            f"unexpected argument {celery_args[0]!r}; options for `celery worker` go after `--`, "
            "e.g. unified-jobs start --worker -- --prefetch-multiplier 1"
        )
    if worker + server_and_worker + scheduler_only != 1:
        raise click.UsageError("say what to start: --worker (-w), --server-and-worker (-s) or --scheduler")
    if no_scheduler and scheduler_only:
        raise click.UsageError("--no-scheduler is for -w and -s; --scheduler runs only the scheduler")
    if metrics_port is not None and scheduler_only:
        raise click.UsageError("--metrics-port is for -w and -s: a --scheduler process runs no jobs")
    if metrics_port is not None and worker:
        from unified_jobs.observability import multiprocess

        # Before the app is imported: every metric made from now on (the user's too) counts in
        # files the pool processes share, and the main process serves their sum.
        multiprocess.prepare()
    jobs = obj.jobs()
    if scheduler_only:
        run_scheduler(jobs, tags=tags, loglevel=loglevel)
    elif worker:
        run_worker(
            jobs,
            queues=queues,
            tags=tags,
            concurrency=concurrency,
            pool=pool,
            loglevel=loglevel,
            hostname=hostname,
            celery_args=celery_args,
            scheduler=not no_scheduler,
            metrics_port=metrics_port,
            metrics_binding=metrics_binding,
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
            scheduler=not no_scheduler,
            metrics_port=metrics_port,
            metrics_binding=metrics_binding,
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
    scheduler: bool = True,
    metrics_port: int | None = None,
    metrics_binding: str = "127.0.0.1",
) -> None:
    """Run a Celery worker for the app in the foreground (what ``start --worker`` does), with a
    scheduler thread in its main process if the app has schedules (unless ``scheduler`` is
    false), and with ``metrics_port``, Prometheus metrics served from its main process."""
    if jobs.mode != "BackgroundQueue":
        where = "in the calling thread" if jobs.mode == "ForegroundBlocking" else "inside your app's process"
        raise UnifiedJobsError(
            f"workers.mode is {jobs.mode}: jobs run {where}, so there is no queue for a worker to consume; "
            "set workers.mode: BackgroundQueue (with a queue: section) to use worker processes"
        )
    selected = select_queues(jobs, queues, tags)
    _flush_if_asked(jobs, selected)
    count = _worker_concurrency(jobs, concurrency)

    def worker_argv(pool: str | None, concurrency: int, hostname: str | None) -> list[str]:
        argv = ["worker", "--queues", ",".join(selected), "--concurrency", str(concurrency)]
        argv += ["--pool", pool] if pool else []  # else the app's worker_pool
        argv += ["--loglevel", loglevel]
        if hostname:
            argv += ["--hostname", hostname]
        return argv + list(celery_args)

    with_scheduler = scheduler and _schedules_to_run(jobs)
    if metrics_port is not None:
        _serve_worker_metrics(jobs, metrics_port, metrics_binding)
    from unified_jobs.adapters.celery import draining

    draining.isolate_pool_processes()  # a SIGTERM to the process group is a warm stop too
    draining.stop_grace = jobs.config.workers.stop_grace
    if pool == "processes":
        from unified_jobs.adapters.celery import supervisor

        _log_to_stderr(supervisor.logger, loglevel, "supervisor")

        def run_child(index: int) -> None:
            if with_scheduler and index == 1:  # one scheduler per worker, in its first process
                _scheduler_with_worker(jobs)
            jobs.celery.conf.worker_pool = supervisor.POOL  # Celery's solo pool, with a cold stop
            try:
                jobs.celery.worker_main(argv=worker_argv(None, 1, supervisor.child_hostname(hostname, index)))
            except click.ClickException as exc:  # a bad `celery worker` option: its usage error
                exc.show()
                sys.exit(exc.exit_code)

        sys.exit(supervisor.Supervisor(jobs, count, run_child).run())
    if with_scheduler:
        _scheduler_with_worker(jobs)
    jobs.celery.worker_main(argv=worker_argv(pool, count, hostname))
    sys.exit(0)


def _log_to_stderr(logger: logging.Logger, level: str, name: str) -> None:
    """Log ``logger``'s records of ``level`` and above to stderr, as Celery's worker logs its own
    (a process that runs no Celery worker itself: a supervisor)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[%(asctime)s: %(levelname)s/{name}] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def _scheduler_with_worker(jobs: Jobs) -> None:
    from unified_jobs.adapters.celery.worker_scheduler import with_worker

    thread = jobs._scheduler()
    with_worker(jobs.celery, thread.start, thread.stop)


def _serve_worker_metrics(jobs: Jobs, port: int, binding: str) -> None:
    """Metrics of every pool process, served from this (main) process: started before the pool
    forks, so that its processes inherit the metrics on the executor and count in the shared
    directory (made now if ``start`` did not)."""
    from unified_jobs import observability
    from unified_jobs.observability import multiprocess

    folder = multiprocess.prepare()
    host, bound = observability.serve_metrics(jobs, port, binding)
    jobs.celery_bridge().on_pool_process_exit(multiprocess.process_exited)
    click.echo(
        f"metrics: http://{_url_host(host)}:{bound}/metrics (pool processes count in {folder})", err=True
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


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
    scheduler: bool = True,
    metrics_port: int | None = None,
    metrics_binding: str = "127.0.0.1",
) -> None:
    """Serve the ASGI app with uvicorn, and run the jobs in this process too (and a scheduler
    thread, unless ``scheduler`` is false; BackgroundAsync apps run their own); with
    ``metrics_port``, Prometheus metrics of this one process on their own port."""
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
    if metrics_port is not None:
        from unified_jobs import observability

        host_bound, port_bound = observability.serve_metrics(jobs, metrics_port, metrics_binding)
        click.echo(f"metrics: http://{_url_host(host_bound)}:{port_bound}/metrics", err=True)
    embedded = None
    thread = None
    if jobs.mode == "BackgroundQueue" and scheduler and _schedules_to_run(jobs):
        thread = jobs._scheduler()
    if jobs.mode == "BackgroundQueue":
        from unified_jobs.adapters.celery.embedded import EmbeddedWorker

        selected = select_queues(jobs, queues, tags)
        _flush_if_asked(jobs, selected)
        embedded = EmbeddedWorker(jobs, concurrency=_worker_concurrency(jobs, concurrency), queues=selected)
        embedded.start()
        if thread is not None:
            thread.start()
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
        if thread is not None:
            thread.stop()
        if embedded is not None:
            embedded.stop()
        jobs.shutdown(wait=True, timeout=jobs.config.workers.shutdown_timeout)
    if not server.started:
        raise UnifiedJobsError(
            f"the server did not start on {server.config.host}:{server.config.port} (see the log above)"
        )


def _schedules_to_run(jobs: Jobs) -> bool:
    """Whether the app has schedules; they are bound now, so a config schedule naming an
    unregistered worker (or with args that do not validate) stops the start with its error."""
    return bool(jobs.schedules)


def run_scheduler(jobs: Jobs, *, tags: tuple[str, ...] = (), loglevel: str = "INFO") -> None:
    """Run scheduler passes in the foreground until SIGTERM / Ctrl-C (``start --scheduler``)."""
    if jobs.mode != "BackgroundQueue":
        raise UnifiedJobsError(
            f"workers.mode is {jobs.mode}: there is no queue for a scheduler process to enqueue to "
            + (
                "(a BackgroundAsync app runs its schedules itself, in its own process)"
                if jobs.mode == "BackgroundAsync"
                else "(in ForegroundBlocking, call jobs.run_schedule_once() where a pass should run)"
            )
            + "; set workers.mode: BackgroundQueue (with a queue: section) to run scheduler processes"
        )
    schedules = jobs.schedules  # bound and checked now: an error stops the start
    if not schedules:
        raise UnifiedJobsError(
            "the app has no schedules to run: add scheduler.jobs to the config, or call "
            "jobs.schedule(...) where the app registers its workers"
        )
    scheduler = jobs._scheduler(tags)
    selected = scheduler.selected()
    if not selected:
        known = sorted({t for s in schedules.values() for t in s.tags})
        raise UnifiedJobsError(
            f"no schedule has tag {', '.join(tags)} (tags in use: {', '.join(known) or 'none'})"
        )
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    click.echo(
        f"scheduler ready as {identity()}: {len(selected)} schedule(s): "
        + ", ".join(f"{s.name} ({s.expression})" for s in selected),
        err=True,
    )
    scheduler.run_forever(stop)
    click.echo("scheduler stopped", err=True)
    jobs.shutdown(wait=True, timeout=jobs.config.workers.shutdown_timeout)
