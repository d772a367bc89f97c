"""Configuration: ``config/<env>.yaml``, with Loco's keys.

Parsing is strict: an unknown key, a wrong value or type, or a missing section is a
``ConfigError`` naming the file, the key and the accepted values.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unified_jobs.core.heartbeat import DEFAULT_STALE_AFTER
from unified_jobs.core.retry import Retry
from unified_jobs.errors import ConfigError

__all__ = [
    "CONFIG_DIR_VAR",
    "DEFAULT_ENV",
    "ENV_VAR",
    "KEEPABLE_CELERY_SETTINGS",
    "Config",
    "DashboardConfig",
    "Kind",
    "Mode",
    "QueueConfig",
    "RetryConfig",
    "ScheduleConfig",
    "SchedulerConfig",
    "ServerConfig",
    "WorkersConfig",
    "config_dir_default",
    "load_config",
    "render_template",
]

ENV_VAR = "UNIFIED_JOBS_ENV"
DEFAULT_ENV = "development"
CONFIG_DIR_VAR = "UNIFIED_JOBS_CONFIG_DIR"
DEFAULT_CONFIG_DIR = "config"

#: The Celery settings unified_jobs sets on an adopted app that ``workers.keep_celery_settings``
#: can leave as the app has them. Not among them: the serializer (Worker jobs are JSON, which
#: the job stores and ``jobs dump`` read), ``broker_url`` (the queue's ``uri``), ``task_routes``
#: (Workers' routes are added in front of the app's) and ``broker_transport_options`` (merged).
KEEPABLE_CELERY_SETTINGS = (
    "task_acks_late",
    "task_reject_on_worker_lost",
    "task_acks_on_failure_or_timeout",
    "accept_content",
    "result_serializer",
    "result_accept_content",
    "task_publish_retry",
    "task_publish_retry_policy",
    "broker_connection_retry_on_startup",
    "broker_connection_max_retries",
)

Mode = Literal["BackgroundQueue", "ForegroundBlocking", "BackgroundAsync"]
Kind = Literal["Redis", "Postgres", "Sqlite", "RabbitMQ"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryConfig(_Strict):
    """``workers.retry``: the app-wide ``Retry`` (times in seconds)."""

    max_attempts: int = Field(default=3, ge=1, le=1000)
    wait: float = Field(default=1.0, ge=0)
    backoff: float = Field(default=2.0, ge=1)
    max_wait: float = Field(default=3600.0, ge=0)
    jitter: bool = True

    def policy(self) -> Retry:
        return Retry(**self.model_dump())


class WorkersConfig(_Strict):
    """The ``workers:`` section."""

    mode: Mode = "BackgroundAsync"
    #: BackgroundAsync pool size, and the default concurrency of ``start --worker``.
    concurrency: int = Field(default=4, ge=1, le=1024)
    #: Seconds the BackgroundAsync pool waits for queued jobs at interpreter exit.
    shutdown_timeout: float = Field(default=10.0, ge=0)
    #: ``start --worker``: seconds a warm stop (SIGTERM) lets the running jobs finish; then the
    #: worker stops cold, and the jobs still running go back to their queue to run again. None
    #: (the default, as Celery): wait for them however long they take.
    stop_grace: float | None = Field(default=None, gt=0)
    #: A job whose worker process dies (OOM, SIGKILL, ``os._exit``) is delivered at most this
    #: many times, then failed with ``WorkerLost``.
    max_deliveries: int = Field(default=3, ge=1, le=1000)
    #: The retry policy of Workers that have no ``retry`` of their own (default: none).
    retry: RetryConfig | None = None
    #: Seconds a completed job's record is kept (Redis and in-process stores); failed ones stay
    #: until discarded.
    keep_completed: float = Field(default=86_400.0, ge=0)
    #: An adopted Celery app's own settings to keep as the app has them, where unified_jobs
    #: would otherwise set them (see ``KEEPABLE_CELERY_SETTINGS``). Workers' tasks keep safe
    #: delivery whatever the app says.
    keep_celery_settings: tuple[str, ...] = ()
    #: Seconds between the heartbeats of a worker process (and of the BackgroundAsync pool),
    #: written into the queue's job store for the dashboard and ``doctor --workers``. A worker
    #: whose last beat is older than about two of these is gone.
    heartbeat_interval: float = Field(default=10.0, ge=0.1, le=3600)
    #: A file each worker process also writes its heartbeat to (JSON, replaced at each beat,
    #: removed on a clean stop), for probes that read a file, not the store; ``{pid}`` in the
    #: path is replaced by the process id (for several worker processes on one host).
    heartbeat_file: str | None = Field(default=None, min_length=1)
    #: ``doctor --workers`` fails for a live worker with a free slot that had not asked its
    #: queues for jobs for more than this many seconds when it wrote its last beat (a stalled
    #: consumer); ``--stale-after`` overrides it.
    stale_after: float = Field(default=DEFAULT_STALE_AFTER, gt=0)

    @field_validator("keep_celery_settings")
    @classmethod
    def _keepable(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in names if name not in KEEPABLE_CELERY_SETTINGS]
        if unknown:
            raise ValueError(
                f"cannot keep {', '.join(unknown)}: the settings an adopted app can keep are "
                f"{', '.join(KEEPABLE_CELERY_SETTINGS)}"
            )
        return names

    def default_retry(self) -> Retry | None:
        return self.retry.policy() if self.retry is not None else None


class QueueConfig(_Strict):
    """The ``queue:`` section (required when ``workers.mode`` is ``BackgroundQueue``)."""

    kind: Kind
    uri: str
    #: On worker start, delete every queued job of this app (only this app's queues).
    dangerously_flush: bool = False
    # Loco's optional fields, same meaning.
    enable_logging: bool = False
    max_connections: int = Field(default=20, ge=1)
    min_connections: int = Field(default=1, ge=0)
    #: Milliseconds to wait for a connection to the queue's server (and the RabbitMQ kind's job
    #: store) to be set up; Postgres rounds it up to whole seconds, at least 2 (libpq's minimum).
    connect_timeout: int = Field(
        default=500,
        ge=1,
        description="milliseconds to wait for a connection to the queue's server to be set up",
    )
    #: Milliseconds to wait for each answer of the server (and of the RabbitMQ kind's job
    #: store) before the command fails: an enqueue to a server that accepted the connection and
    #: does not answer raises ``EnqueueError`` after at most two such waits (see
    #: docs/reference/configuration.md, "Timeouts").
    read_timeout: int = Field(
        default=5000,
        ge=1,
        description="milliseconds to wait for each answer of the queue's server",
    )
    idle_timeout: int = Field(default=500, ge=1, description="milliseconds")
    poll_interval_sec: float = Field(default=1.0, gt=0)
    num_workers: int | None = Field(default=None, ge=1)
    queues: tuple[str, ...] | None = None
    #: Redis only: seconds before an unacknowledged job is delivered again.
    visibility_timeout: int = Field(default=3600, ge=1)
    #: SQL kinds only: seconds a claimed job stays leased without a heartbeat.
    lease_sec: float = Field(default=30.0, gt=0, le=3600)
    #: SQL kinds only: tables are ``<table_prefix>jobs`` (several apps can share a database).
    table_prefix: str = Field(default="unified_jobs_", pattern=r"^[a-z_][a-z0-9_]{0,40}$")
    #: SQL kinds only: what acknowledging a finished job does to its row: keep it as
    #: ``completed`` (for ``unified-jobs jobs``; ``jobs tidy`` deletes them) or ``delete`` it.
    on_ack: Literal["complete", "delete"] = "complete"
    #: RabbitMQ only (and required there): the ``redis://`` URI of the job store that keeps
    #: each job's status, attempts and errors (RabbitMQ keeps messages, not job records).
    store_uri: str | None = None
    #: RabbitMQ only: a publish waits for RabbitMQ to confirm it has the message (on disk), so
    #: ``perform_later`` returning means the job exists; false: ~2.5x the enqueue rate, but a
    #: job published just before the broker fails, or one it refuses, is lost without an error.
    confirm_publish: bool = True

    @property
    def connect_timeout_sec(self) -> float:
        """``connect_timeout`` in seconds."""
        return self.connect_timeout / 1000

    @property
    def read_timeout_sec(self) -> float:
        """``read_timeout`` in seconds."""
        return self.read_timeout / 1000

    @model_validator(mode="after")
    def _uri_not_empty(self) -> QueueConfig:
        if not self.uri.strip():
            raise ValueError("queue.uri is empty; set it to the broker's URI")
        return self

    @model_validator(mode="after")
    def _rabbitmq_uris(self) -> QueueConfig:
        if self.kind != "RabbitMQ":
            if self.store_uri is not None:
                raise ValueError(
                    f"queue.store_uri is for the RabbitMQ kind only; the {self.kind} queue keeps "
                    "its own job records: remove store_uri"
                )
            return self
        scheme = self.uri.strip().partition("://")[0].lower()
        if scheme not in ("amqp", "amqps"):
            raise ValueError(
                "queue.uri of the RabbitMQ kind must be amqp://user:password@host:5672/vhost (or amqps://)"
            )
        store = (self.store_uri or "").strip()
        if not store:
            raise ValueError(
                "queue.kind RabbitMQ needs queue.store_uri, the job store (status, attempts, failed "
                "jobs): a Redis URI such as redis://127.0.0.1:6379/0"
            )
        if store.partition("://")[0].lower() not in ("redis", "rediss", "unix"):
            raise ValueError(
                "queue.store_uri must be a Redis URI (redis://, rediss:// or unix://): the RabbitMQ "
                "kind keeps its job records in Redis"
            )
        return self


class ServerConfig(_Strict):
    """The ``server:`` section, for ``unified-jobs start --server-and-worker``."""

    #: The ASGI app as ``module:attribute``, e.g. ``myapp.web:app``.
    app: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=5150, ge=0, le=65535)  # Loco's default port


class DashboardConfig(_Strict):
    """The ``dashboard:`` section: ``unified-jobs dashboard`` and ``dashboard.create_app``.

    Credentials come from here or from the environment (``UNIFIED_JOBS_DASHBOARD_TOKEN``,
    ``..._USERNAME``, ``..._PASSWORD``); keep them out of the file with ``{{ get_env(...) }}``.
    Without any, the dashboard serves loopback clients only.
    """

    binding: str = "127.0.0.1"
    port: int = Field(default=5160, ge=0, le=65535)
    #: A bearer token (``Authorization: Bearer ...``, or ``?token=`` once in a browser).
    token: str | None = Field(default=None, min_length=16)
    #: HTTP basic auth; both or neither.
    username: str | None = Field(default=None, min_length=1)
    password: str | None = Field(default=None, min_length=8)
    #: Whether the action buttons (retry, discard, cancel, run now, purge) are offered.
    read_only: bool = False

    @model_validator(mode="after")
    def _both_or_neither(self) -> DashboardConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("dashboard.username and dashboard.password go together: set both or neither")
        return self


class ScheduleConfig(_Strict):
    """One entry of ``scheduler.jobs`` (Loco's keys): ``run`` a registered worker's name, on
    ``schedule`` (a cron expression) or ``every`` (seconds), with ``args``."""

    run: str = Field(min_length=1)
    #: A five-field cron expression (``"0 2 * * *"``) or ``@hourly``/``@daily``/...
    schedule: str | None = None
    #: Or a period in seconds (ticks at multiples of it since 1970-01-01 UTC).
    every: float | None = Field(default=None, ge=1)
    args: dict[str, Any] = Field(default_factory=dict)
    #: ``start --scheduler --tag T`` runs only the schedules with tag T (default: the worker's tags).
    tags: tuple[str, ...] | None = None
    #: The cron expression's time zone (an IANA name; default UTC).
    timezone: str | None = None
    #: What to do with ticks missed while no scheduler ran (default: ``scheduler.missed``).
    missed: Literal["latest", "all", "skip"] | None = None
    #: Enqueue on this queue instead of the worker's.
    queue: str | None = Field(default=None, min_length=1)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        from unified_jobs.scheduler.definition import check_cron

        return None if value is None else check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        from unified_jobs.scheduler.definition import check_timezone

        if value is not None:
            check_timezone(value)
        return value

    @model_validator(mode="after")
    def _when(self) -> ScheduleConfig:
        if (self.schedule is None) == (self.every is None):
            raise ValueError(
                "give either schedule (a cron expression such as '0 2 * * *') or every (seconds), "
                "not both or neither"
            )
        if self.every is not None and self.timezone is not None:
            raise ValueError("timezone is for cron schedules; every ticks are time-zone free")
        return self


class SchedulerConfig(_Strict):
    """The ``scheduler:`` section: recurring jobs (Loco's ``scheduler.jobs``)."""

    #: App-wide policy for ticks missed while no scheduler ran: run the ``latest`` once, ``all``
    #: of them (at most 100, the newest), or ``skip`` them.
    missed: Literal["latest", "all", "skip"] = "latest"
    #: Seconds between scheduler passes, at most (a pass also runs right after each tick).
    interval: float = Field(default=1.0, gt=0, le=60)
    jobs: dict[str, ScheduleConfig] = Field(default_factory=dict)

    @field_validator("jobs", mode="before")
    @classmethod
    def _entries(cls, value: Any) -> Any:
        # Checked here, entry by entry, so that an error names the schedule and the key, and
        # lists the accepted keys.
        from unified_jobs.scheduler.definition import check_name

        if not isinstance(value, dict):
            raise ValueError("scheduler.jobs is a mapping of schedule names to {run:, schedule:, args:}")
        out: dict[str, Any] = {}
        problems: list[str] = []
        for name, entry in value.items():
            key = f"scheduler.jobs.{name}"
            try:
                check_name(name)
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
                continue
            if isinstance(entry, ScheduleConfig):
                out[name] = entry
                continue
            try:
                out[name] = ScheduleConfig.model_validate(entry)
            except ValidationError as exc:
                for err in exc.errors():
                    where = ".".join([key, *(str(p) for p in err["loc"])])
                    if err["type"] == "extra_forbidden":
                        accepted = ", ".join(ScheduleConfig.model_fields)
                        problems.append(f"{where}: unknown key; accepted keys here: {accepted}")
                    elif err["type"] == "literal_error":
                        expected = err.get("ctx", {}).get("expected", "")
                        problems.append(f"{where}: got {err['input']!r}; accepted values: {expected}")
                    else:
                        msg = err["msg"].removeprefix("Value error, ")
                        got = "" if isinstance(err["input"], dict) else f" (got {err['input']!r})"
                        problems.append(f"{where}: {msg}{got}")
        if problems:
            what = "an invalid schedule" if len(problems) == 1 else "invalid schedules"
            raise ValueError(f"{what}:\n    " + "\n    ".join(problems))
        return out


class Config(_Strict):
    """The whole configuration file."""

    workers: WorkersConfig = WorkersConfig()
    queue: QueueConfig | None = None
    server: ServerConfig = ServerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    dashboard: DashboardConfig = DashboardConfig()

    @model_validator(mode="after")
    def _queue_needed(self) -> Config:
        if self.workers.mode == "BackgroundQueue" and self.queue is None:
            raise ValueError(
                "workers.mode is BackgroundQueue but there is no queue section; add "
                "queue: {kind: Redis|Postgres|Sqlite|RabbitMQ, uri: ...}"
            )
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<config>") -> Config:
        """Validate a mapping, raising ``ConfigError`` with readable messages."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, source)) from None


_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_GET_ENV = re.compile(
    r"""^\s*get_env\(\s*name\s*=\s*(?P<q1>["'])(?P<name>[^"']+)(?P=q1)\s*"""
    r"""(?:,\s*default\s*=\s*(?P<q2>["'])(?P<default>[^"']*)(?P=q2)\s*)?\)\s*$"""
)


def render_template(text: str, *, source: str = "<config>") -> str:
    """Replace ``{{ get_env(name="X", default="y") }}`` as Loco's config files do."""

    def substitute(match: re.Match[str]) -> str:
        expr = match.group(1)
        call = _GET_ENV.match(expr)
        if call is None:
            raise ConfigError(
                f"{source}: unsupported template {match.group(0)!r}; only "
                '{{ get_env(name="VAR", default="value") }} is supported'
            )
        value = os.environ.get(call.group("name"), call.group("default"))
        if value is None:
            raise ConfigError(
                f"{source}: environment variable {call.group('name')} is not set and the "
                'template gives no default; set it or write get_env(name="...", default="...")'
            )
        return value

    return _TEMPLATE.sub(substitute, text)


def config_dir_default() -> Path:
    """``$UNIFIED_JOBS_CONFIG_DIR``, else ``config`` (relative to the working directory)."""
    return Path(os.environ.get(CONFIG_DIR_VAR) or DEFAULT_CONFIG_DIR)


def load_config(env: str | None = None, config_dir: str | os.PathLike[str] | None = None) -> Config:
    """Load ``<config_dir>/<env>.yaml``; ``env`` defaults to ``$UNIFIED_JOBS_ENV`` or development,
    ``config_dir`` to ``$UNIFIED_JOBS_CONFIG_DIR`` or ``config``."""
    env = env or os.environ.get(ENV_VAR) or DEFAULT_ENV
    if config_dir is None:
        config_dir = config_dir_default()
    path = Path(config_dir) / f"{env}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in Path(config_dir).glob("*.yaml"))
        hint = f" (found envs: {', '.join(available)})" if available else ""
        raise ConfigError(f"{path}: config file not found for env {env!r}{hint}; create it or set {ENV_VAR}")
    source = str(path)
    text = render_template(path.read_text(encoding="utf-8"), source=source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the file must hold a mapping (workers:, queue:)")
    return Config.from_dict(data, source=source)


def _model_for(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = next(
            (
                a
                for a in (annotation, *get_args(annotation))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
    return model


def _explain(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            parent = _model_for(loc[:-1])
            accepted = ", ".join(parent.model_fields) if parent else "?"
            lines.append(f"{key}: unknown key; accepted keys here: {accepted}")
        elif err["type"] == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            lines.append(f"{key}: got {err['input']!r}; accepted values: {expected}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            # a whole section as the input would repeat every value, passwords in URIs too
            whole = isinstance(err["input"], dict)
            if not loc:
                lines.append(msg)
            else:
                lines.append(f"{key}: {msg}" if whole else f"{key}: {msg} (got {err['input']!r})")
    return f"{source}: invalid configuration:\n  " + "\n  ".join(lines)
