"""What travels from ``perform_later`` to an adapter, what the caller gets back, and what a
job store tells about a job."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, get_args

from pydantic import BaseModel

__all__ = [
    "FINISHED",
    "STATUSES",
    "TAGS_HEADER",
    "Job",
    "JobHandle",
    "JobInfo",
    "JobStatus",
    "aware",
    "dump_args",
    "load_args",
    "new_job_id",
    "utcnow",
]

#: A job's state, with Loco's names plus ``scheduled`` (waiting for its ``run_at``) and
#: ``retrying`` (an attempt failed; the next one waits for its backoff).
JobStatus = Literal["queued", "scheduled", "processing", "retrying", "completed", "failed", "cancelled"]
#: Every status, in the order of a job's life.
STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
#: The statuses a job never leaves by itself.
FINISHED: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

#: The message header holding the worker's tags, so they travel with the job (``jobs dump``).
TAGS_HEADER = "unified_jobs_tags"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (a naive one is read as UTC, as Celery and SQLite do)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def dump_args(model: type[BaseModel], args: BaseModel | dict[str, Any]) -> str:
    """``args`` validated into ``model`` (an instance of exactly ``model`` is taken as it is)
    and serialized to JSON, checked to validate back into ``model`` from that JSON, as a
    queue's worker will do: ``ValidationError`` (or the serializer's error) here, not there.

    The same calls as ``model.model_validate``, ``.model_dump_json()`` and
    ``model.model_validate_json`` with their defaults, made on pydantic-core directly (that
    saves a third of their cost) when the model overrides none of the three; otherwise
    through the model's own methods.
    """
    if not _is_plain(model):
        validated = args if type(args) is model else model.model_validate(args)
        payload = validated.model_dump_json()
        model.model_validate_json(payload)
        return payload
    validator = model.__pydantic_validator__
    validated = args if type(args) is model else validator.validate_python(args)
    if type(validated) is not model:  # an instance of a subclass: its own serializer, methods
        payload = validated.model_dump_json()
    elif _BY_ALIAS is None:  # pydantic-core's default too
        payload = model.__pydantic_serializer__.to_json(validated).decode()
    else:
        payload = model.__pydantic_serializer__.to_json(validated, by_alias=_BY_ALIAS).decode()
    validator.validate_json(payload)
    return payload


def load_args(model: type[BaseModel], kwargs_json: str) -> BaseModel:
    """``model.model_validate_json(kwargs_json)``, on pydantic-core directly where that is
    the same (see ``dump_args``)."""
    if _is_plain(model):
        return model.__pydantic_validator__.validate_json(kwargs_json)  # type: ignore[no-any-return]
    return model.model_validate_json(kwargs_json)


def _is_plain(model: type[BaseModel]) -> bool:
    """True when ``model`` overrides none of the methods ``dump_args`` and ``load_args`` skip."""
    plain = _plain_models.get(model)
    if plain is None:
        plain = _plain_models[model] = (
            _BY_ALIAS in (None, False)
            and getattr(model.model_validate, "__func__", None) is _MODEL_VALIDATE
            and getattr(model.model_validate_json, "__func__", None) is _MODEL_VALIDATE_JSON
            and model.model_dump_json is _MODEL_DUMP_JSON
        )
    return plain


_MODEL_VALIDATE = BaseModel.model_validate.__func__  # type: ignore[attr-defined]
_MODEL_VALIDATE_JSON = BaseModel.model_validate_json.__func__  # type: ignore[attr-defined]
_MODEL_DUMP_JSON = BaseModel.model_dump_json
# model_dump_json's by_alias default (pydantic < 2.11: False; later: None, "as configured"),
# passed explicitly: pydantic-core's own default was True before 2.11.
_BY_ALIAS = inspect.signature(BaseModel.model_dump_json).parameters["by_alias"].default
_plain_models: dict[type[BaseModel], bool] = {}


def new_job_id() -> str:
    """A unique job id; the same form as Celery's task ids (a UUID4 string).

    The same 122 random bits from ``os.urandom`` as ``str(uuid.uuid4())``, but drawn for
    ``_ID_BATCH`` ids at a time: one ``getrandom`` call per id released the GIL on every
    enqueue, and a thread enqueueing next to busy pool threads then waited to get it back. A
    forked child drops the ids it inherited (it would hand out its parent's next ids).
    """
    while True:
        try:
            return _id_pool.pop()  # atomic: two threads never get the same id
        except IndexError:
            _id_pool.extend(_uuid4_batch())


_ID_BATCH = 256
_id_pool: list[str] = []
# The hex digit that starts the fourth group: the RFC 4122 variant (10xx) over two random bits.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _uuid4_batch() -> list[str]:
    digits = os.urandom(16 * _ID_BATCH).hex()
    variant = _VARIANT
    return [
        f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:]}"
        for h in (digits[i : i + 32] for i in range(0, 32 * _ID_BATCH, 32))
    ]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_id_pool.clear)


@dataclass(frozen=True, slots=True)
class JobHandle:
    """Returned by ``perform_later``: which job was enqueued, and where."""

    #: Unique id; with BackgroundQueue it is the Celery task id.
    id: str
    #: The worker's ``name`` (the Celery task name).
    worker: str
    #: The queue the job went to.
    queue: str
    #: When the job becomes due (UTC), or ``None`` for "now".
    run_at: datetime | None = None
    #: The priority asked for, or ``None`` for the default.
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """An enqueued job as adapters see it: Celery's (args, kwargs) as JSON text.

    A ``Worker`` job has ``args_json == "[]"`` and the arguments model's JSON as
    ``kwargs_json``, which is exactly the body of the Celery message it becomes.
    """

    id: str
    name: str
    queue: str
    kwargs_json: str
    args_json: str = "[]"
    priority: int | None = None
    run_at: datetime | None = None
    enqueued_at: datetime = field(default_factory=utcnow)
    #: Adapter-specific JSON object (an adopted Celery task's callbacks and chain).
    extra_json: str = "{}"
    #: Which try this is: 1 for the first, 2 for the first retry.
    attempt: int = 1
    #: A unique job's key (``Worker.unique_for``, ``perform_later(unique_key=...)``): while a
    #: job holding it waits or runs, no other job with it is enqueued. ``None``: not unique.
    unique_key: str | None = None
    #: Seconds the key is held at most (it is released sooner when the job ends).
    unique_for: float | None = None

    #: ``dump_args``: a Worker job's ``kwargs_json`` from its arguments, checked.
    dump_args = staticmethod(dump_args)

    def handle(self) -> JobHandle:
        return JobHandle(self.id, self.name, self.queue, self.run_at, self.priority)


# A frozen dataclass' generated __init__ sets each field through object.__setattr__, which was
# a tenth of what enqueueing a no-op job cost. These set the slots directly, with the same
# signature, defaults and results; fields(), replace(), ==, hash and repr are the dataclass'.
_UNSET: Any = object()
_now = datetime.now
_utc = timezone.utc
_set_job = tuple(Job.__dict__[f].__set__ for f in Job.__slots__)
_set_handle = tuple(JobHandle.__dict__[f].__set__ for f in JobHandle.__slots__)
if Job.__slots__ != (
    "id",
    "name",
    "queue",
    "kwargs_json",
    "args_json",
    "priority",
    "run_at",
    "enqueued_at",
    "extra_json",
    "attempt",
    "unique_key",
    "unique_for",
) or JobHandle.__slots__ != ("id", "worker", "queue", "run_at", "priority"):  # pragma: no cover
    raise RuntimeError("Job or JobHandle changed its fields: change _job_init/_handle_init too")


def _job_init(
    self: Job,
    id: str,
    name: str,
    queue: str,
    kwargs_json: str,
    args_json: str = "[]",
    priority: int | None = None,
    run_at: datetime | None = None,
    enqueued_at: datetime = _UNSET,
    extra_json: str = "{}",
    attempt: int = 1,
    unique_key: str | None = None,
    unique_for: float | None = None,
) -> None:
    (
        s_id,
        s_name,
        s_queue,
        s_kwargs,
        s_args,
        s_priority,
        s_run_at,
        s_enqueued,
        s_extra,
        s_attempt,
        s_unique_key,
        s_unique_for,
    ) = _set_job
    s_id(self, id)
    s_name(self, name)
    s_queue(self, queue)
    s_kwargs(self, kwargs_json)
    s_args(self, args_json)
    s_priority(self, priority)
    s_run_at(self, run_at)
    s_enqueued(self, _now(_utc) if enqueued_at is _UNSET else enqueued_at)
    s_extra(self, extra_json)
    s_attempt(self, attempt)
    s_unique_key(self, unique_key)
    s_unique_for(self, unique_for)


def _handle_init(
    self: JobHandle,
    id: str,
    worker: str,
    queue: str,
    run_at: datetime | None = None,
    priority: int | None = None,
) -> None:
    s_id, s_worker, s_queue, s_run_at, s_priority = _set_handle
    s_id(self, id)
    s_worker(self, worker)
    s_queue(self, queue)
    s_run_at(self, run_at)
    s_priority(self, priority)


for _cls, _init in ((Job, _job_init), (JobHandle, _handle_init)):
    _init.__name__, _init.__qualname__ = "__init__", f"{_cls.__name__}.__init__"  # in TypeErrors
    setattr(_cls, "__init__", _init)  # noqa: B010 - mypy keeps the dataclass' signature


@dataclass(slots=True)
class JobInfo:
    """What a job store knows of one job (``jobs.job(handle)``); times are aware UTC."""

    id: str
    worker: str
    queue: str
    #: The arguments as JSON-compatible data (the worker's model, dumped).
    args: Any
    status: JobStatus
    #: Attempts started so far (a queued job: 0; a job retried twice and running: 3).
    attempts: int = 0
    #: ``"ExceptionType: message"`` of the last failed attempt, or ``None``.
    last_error: str | None = None
    #: The traceback of the last failed attempt, or ``None``.
    traceback: str | None = None
    enqueued_at: datetime | None = None
    run_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    priority: int | None = None
    #: What ``perform`` returned, as JSON-compatible data (``json.loads(json.dumps(value))``),
    #: once the job completed; ``None`` if it returned ``None``, a value that is not
    #: JSON-serializable or whose JSON is over ``core.outcome.RESULT_LIMIT`` (1 MiB), or where
    #: the store keeps none (the SQL kinds with ``on_ack: delete``; plain Celery tasks on a queue).
    result: Any = None
    #: The dotted path of the last failed attempt's exception class (``builtins.ValueError``,
    #: ``myapp.jobs.PaymentDeclined``), or ``None`` if no attempt failed or the exception is
    #: unknown (a worker process that died, a lease that expired).
    error_class: str | None = None
