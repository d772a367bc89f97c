"""``unified-jobs doctor``: check the config, the queue and the registered workers.

Every check prints one ``ok``/``FAIL``/``warn`` line; all checks run, and the exit status is 1
when any failed. A queue URI's password is masked in every line printed.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import click

from unified_jobs._uri import mask_text, mask_uri, password_pieces, uri_secrets
from unified_jobs.cli import Context, cli
from unified_jobs.cli._app import AppNotFoundError, find_app_spec, load_app
from unified_jobs.cli._faults import encoding_hint, server_fault
from unified_jobs.config import DEFAULT_ENV, ENV_VAR, Config, config_dir_default, load_config
from unified_jobs.errors import ConfigError, UnifiedJobsError
from unified_jobs.jobs import Jobs

__all__ = ["DoctorReport", "doctor"]


@dataclass
class DoctorReport:
    """The lines ``doctor`` prints, and the problems found; every line is password-masked."""

    #: Passwords to mask wherever they appear (taken from the queue URI).
    secrets: list[str] = field(default_factory=list)
    #: Pieces of a password written with a bare ``@`` or ``/``, masked where they stand alone
    #: (a driver may print one as the host it could not find).
    words: list[str] = field(default_factory=list)
    #: ``(topic, message)`` of every failed check.
    problems: list[tuple[str, str]] = field(default_factory=list)

    def add_secret_from(self, uri: str) -> None:
        """Mask the password of ``uri`` (and its ``password=`` query values) from now on."""
        self.secrets += uri_secrets(uri)
        self.words += password_pieces(uri)

    def add_secrets_of(self, config: Config) -> None:
        """Mask the passwords of the queue's URIs (``uri``, ``store_uri``) from now on."""
        if config.queue is not None:
            for uri in (config.queue.uri, config.queue.store_uri):
                if uri:
                    self.add_secret_from(uri)

    def mask(self, text: str) -> str:
        """``text`` with every URI password, and every known secret, replaced by ``***``."""
        return mask_text(text, self.secrets, self.words)

    def ok(self, topic: str, message: str) -> None:
        """A check that passed."""
        self._line("ok", topic, message)

    def fail(self, topic: str, message: str) -> None:
        """A check that failed: printed now, counted for the exit status."""
        self.problems.append((topic, message))
        self._line("FAIL", topic, message)

    def warn(self, topic: str, message: str) -> None:
        """Worth knowing, not a failure."""
        self._line("warn", topic, message)

    def info(self, topic: str, message: str) -> None:
        """What is in force (env, mode, kind)."""
        self._line("", topic, message)

    def _line(self, status: str, topic: str, message: str) -> None:
        first, *rest = self.mask(message).splitlines() or [""]
        click.echo(f"{status:<5} {topic + ':':<9} {first}")
        for line in rest:
            click.echo(f"{'':<16}{line.strip()}")


@cli.command()
@click.option(
    "--fix",
    is_flag=True,
    show_envvar=True,
    help="Create (or migrate) the SQL queue's tables when they are missing (or old).",
)
@click.option(
    "--config-dir",
    default=None,
    show_envvar=True,
    metavar="DIR",
    help="Where <ENV>.yaml is, for checking the config alone when no app is found or it fails to load "
    "[default: $UNIFIED_JOBS_CONFIG_DIR, else config].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=3.0,
    show_default=True,
    show_envvar=True,
    metavar="SECONDS",
    help="How long to wait for the queue to answer.",
)
@click.option(
    "--workers",
    "probe_workers",
    is_flag=True,
    envvar="UNIFIED_JOBS_DOCTOR_WORKERS",
    show_envvar=True,
    help="Instead of the other checks, probe the worker processes by their heartbeats: list them, "
    "and fail if none is alive or one is stalled (exit status: see above).",
)
@click.option(
    "--stale-after",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    show_envvar=True,
    metavar="SECONDS",
    help="--workers: a live worker with a free slot that had not asked its queues for jobs for "
    "longer than this when it wrote its last beat is stalled [default: workers.stale_after, 30].",
)
@click.option(
    "--worker",
    "worker_ids",
    multiple=True,
    envvar="UNIFIED_JOBS_DOCTOR_WORKER",
    show_envvar=True,
    metavar="ID",
    help="--workers: probe only this worker: its id (<node name>:<pid>, as listed), its Celery "
    "node name, or its pid (repeatable).",
)
@click.option(
    "--this-host",
    is_flag=True,
    show_envvar=True,
    help="--workers: probe only the workers on this host (its hostname), e.g. in a Kubernetes "
    "liveness probe run in the worker's container.",
)
@click.option(
    "--heartbeat-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    show_envvar=True,
    metavar="PATH",
    help="--workers: read the beat from this file (the worker's workers.heartbeat_file) instead of "
    "the job store, so that the probe needs neither the store nor the app.",
)
@click.pass_obj
def doctor(
    obj: Context,
    fix: bool,
    config_dir: str | None,
    timeout: float,
    probe_workers: bool,
    stale_after: float | None,
    worker_ids: tuple[str, ...],
    this_host: bool,
    heartbeat_file: Path | None,
) -> None:
    """Check the config, the queue and the registered workers; or, with --workers, probe the
    worker processes.

    Loads the app (--app, UNIFIED_JOBS_APP or pyproject.toml) and says which env, mode and
    queue kind are in force; connects to the queue (Redis: PING; Postgres and SQLite: connect
    and check the queue's tables, which --fix creates); lists the registered workers with
    their queues and tags. Without an app, checks the config file alone (--config-dir).
    Every check runs; the exit status is 1 if any failed, with one FAIL line per problem.

    --workers reads the heartbeats that every worker process writes into the queue's store
    (every workers.heartbeat_interval s) and lists the workers seen: id, host, pid, queues,
    busy slots, age of the last beat and of the last poll. A worker whose beat stopped is
    gone; one that is alive and has a free slot, but had stopped asking its queues for jobs
    (a stalled consumer), fails the probe; one whose every slot is busy does not.

    \b
    Exit status with --workers:
      0  at least one live worker is seen (of those probed), and none is stalled
      1  no live worker is seen (of those probed), or one is stalled
      2  wrong usage
      3  the heartbeats could not be read: the app or config did not load, the store did
         not answer within --timeout, or the mode keeps none another process can read
    """
    report = DoctorReport()
    workers_only = (stale_after, worker_ids, this_host, heartbeat_file)
    if not probe_workers and any(option not in (None, (), False) for option in workers_only):
        raise click.UsageError("--stale-after, --worker, --this-host and --heartbeat-file go with --workers")
    if probe_workers and fix:
        raise click.UsageError("--fix is not for --workers: run `unified-jobs doctor --fix` on its own")
    if probe_workers and heartbeat_file is not None:
        from unified_jobs.cli import doctor_workers

        doctor_workers.probe_file(
            report, heartbeat_file, stale_after=stale_after, worker_ids=worker_ids, this_host=this_host
        )
    env = os.environ.get(ENV_VAR) or DEFAULT_ENV
    source = f"from --env or {ENV_VAR}" if os.environ.get(ENV_VAR) else "the default"
    report.info("env", f"{env} ({source})")
    jobs, config = _load(obj, report, env, Path(config_dir) if config_dir else config_dir_default())
    if probe_workers:
        from unified_jobs.cli import doctor_workers

        if config is None:
            raise click.exceptions.Exit(doctor_workers.EXIT_CANNOT_TELL)
        doctor_workers.probe_store(
            report,
            config,
            stale_after=stale_after,
            worker_ids=worker_ids,
            this_host=this_host,
            timeout=timeout,
        )
    if config is not None:
        _describe(report, config, jobs)
        queued = config.workers.mode == "BackgroundQueue" and config.queue is not None
        if queued and not _bare_password(report, config):
            _check_queue(report, config, fix=fix, timeout=timeout)
        if jobs is not None:
            _list_workers(report, jobs)
    if report.problems:
        topics = ", ".join(dict.fromkeys(topic for topic, _ in report.problems))
        n = len(report.problems)
        click.echo(f"\ndoctor found {n} problem{'' if n == 1 else 's'} ({topics}); see the FAIL lines above")
        raise click.exceptions.Exit(1)
    click.echo("\ndoctor: every check passed")


def _load(
    obj: Context, report: DoctorReport, env: str, config_dir: Path
) -> tuple[Jobs | None, Config | None]:
    """The app and its config; without an app, the config file alone."""
    try:
        spec: str | None = find_app_spec(obj.app_spec)
    except AppNotFoundError as exc:
        spec = None
        report.warn("app", f"{exc}; checking the config file alone, and no workers are listed")
    if spec is not None:
        try:
            jobs = load_app(spec)
        except ConfigError as exc:
            report.fail("config", str(exc))
            return None, None
        except Exception as exc:  # a user's module can fail to import in any way: say how
            if obj.debug:
                traceback.print_exc()
            detail = str(exc) if isinstance(exc, UnifiedJobsError) else f"{type(exc).__name__}: {exc}"
            hints = ""
            with contextlib.suppress(Exception):  # the config's own errors are reported below
                alone = load_config(env, config_dir)
                report.add_secrets_of(alone)  # the error may show a piece of a password
                if alone.queue is not None:
                    hints = encoding_hint(alone.queue.uri, "queue.uri")
                    hints += encoding_hint(alone.queue.store_uri or "", "queue.store_uri")
            report.fail("app", f"cannot load {spec}: {detail}{hints}")
        else:
            report.ok("app", f"{spec} loaded ({jobs!r})")
            report.add_secrets_of(jobs.config)
            report.ok("config", "valid (loaded by the app)")
            return jobs, jobs.config
    path = config_dir / f"{env}.yaml"
    try:
        config = load_config(env, config_dir)
    except ConfigError as exc:
        report.fail("config", str(exc))
        return None, None
    report.add_secrets_of(config)
    report.ok("config", f"{path} is valid")
    return None, config


def _describe(report: DoctorReport, config: Config, jobs: Jobs | None) -> None:
    mode = jobs.mode if jobs is not None else config.workers.mode
    report.info("mode", mode)
    queue = config.queue
    if queue is None:
        report.info("queue", f"none (mode {mode} needs no queue)")
        return
    report.info("queue", f"{queue.kind} at {mask_uri(queue.uri)}")
    if config.workers.mode != "BackgroundQueue":
        report.warn("queue", f"the queue: section is not used in mode {config.workers.mode}")
    elif queue.dangerously_flush:
        report.warn("queue", "dangerously_flush is on: each worker start deletes every queued job")


def _bare_password(report: DoctorReport, config: Config) -> bool:
    """A FAIL line, and True, when a queue URI's password has a bare ``@`` or ``/``: drivers
    would read part of it as the host (and print it), so doctor does not connect."""
    assert config.queue is not None
    failed = False
    for key, uri in (("queue.uri", config.queue.uri), ("queue.store_uri", config.queue.store_uri)):
        hint = encoding_hint(uri or "", key)
        if hint:
            report.fail("queue", f"not connecting to {mask_uri(uri or '')}{hint}")
            failed = True
    return failed


def _check_queue(report: DoctorReport, config: Config, *, fix: bool, timeout: float) -> None:
    """The queue kind's own health checks (does the broker answer; are the SQL tables there)."""
    from unified_jobs.adapters.celery.kinds import kind_for

    assert config.queue is not None
    try:
        checks = kind_for(config.queue, config.workers).health(fix=fix, timeout=timeout)
    except Exception as exc:  # a check that did not catch its driver's error
        fault = server_fault(exc, config.queue)
        report.fail("queue", str(fault) if fault is not None else f"{type(exc).__name__}: {exc}")
        return
    for level, topic, message in checks:
        getattr(report, level)(topic, message)


def _list_workers(report: DoctorReport, jobs: Jobs) -> None:
    workers = sorted(jobs.workers.values(), key=lambda w: w.name)
    if not workers:
        report.warn("workers", "none registered; call jobs.register(MyWorker) in your app module")
        return
    report.ok("workers", f"{len(workers)} registered")
    rows = [("NAME", "QUEUE", "TAGS", "PERFORM")]
    rows += [
        (w.name, w.queue, ", ".join(w.tags) or "-", "async" if w.is_async() else "sync") for w in workers
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            " " * 16 + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
