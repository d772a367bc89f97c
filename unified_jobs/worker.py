"""``Worker[Args]``: a background job with typed (pydantic) arguments."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, get_args, get_origin

from pydantic import BaseModel

from unified_jobs.core.retry import Retry, seconds
from unified_jobs.errors import NotRegisteredError, WorkerDefinitionError

if TYPE_CHECKING:
    from unified_jobs.core.job import JobHandle
    from unified_jobs.core.limits import CancelToken
    from unified_jobs.jobs import Jobs

__all__ = ["Args", "Worker"]

Args = TypeVar("Args", bound=BaseModel)

_EXAMPLE = (
    "write it as:\n"
    "    class MyArgs(pydantic.BaseModel):\n"
    "        user_id: int\n\n"
    "    class {name}(Worker[MyArgs]):\n"
    "        def perform(self, args: MyArgs) -> None: ..."
)


class Worker(Generic[Args]):
    """Base class of every job.

    Subclass it with the pydantic model of the job's arguments as the generic parameter and
    implement ``perform`` (plain or ``async def``)::

        class ReportWorker(Worker[ReportArgs]):
            queue = "reports"
            def perform(self, args: ReportArgs) -> None: ...

    One instance is built per job, with the app's shared context as ``self.ctx``.
    """

    #: Queue the worker's jobs go to unless ``perform_later(queue=...)`` says otherwise.
    #: Unset, it is ``"default"``, or an adopted Celery app's ``task_default_queue`` (set on the
    #: class when it is registered with that app).
    queue: ClassVar[str] = "default"
    #: Whether the class (or a base) names its queue; else registering sets the app's default.
    _queue_named: ClassVar[bool] = False
    #: Tags; ``unified-jobs start --worker --tag T`` runs only workers tagged ``T``.
    tags: ClassVar[tuple[str, ...]] = ()
    #: Unique name, also the Celery task name. Default: ``"<module>.<ClassName>"``.
    name: ClassVar[str]
    #: The pydantic model of the arguments, taken from the generic parameter.
    args_model: ClassVar[type[BaseModel]]
    #: How failed attempts are retried; ``None``: the config's ``workers.retry``, else no retry.
    retry: ClassVar[Retry | None] = None
    #: The longest one attempt may run (a timedelta or seconds); past it the attempt fails
    #: with ``TimeLimitExceeded`` and is retried per ``retry``. ``None``: no limit.
    time_limit: ClassVar[timedelta | float | None] = None
    #: Unique jobs: while a job of this worker with the same arguments (or the same
    #: ``perform_later(unique_key=...)``) waits or runs, enqueueing another returns the existing
    #: job's handle and enqueues nothing. The key is released when the job ends (completed,
    #: failed, cancelled or discarded) and is held this long at most (a timedelta or seconds).
    #: ``None``: jobs are unique only when ``perform_later`` gives a ``unique_key``.
    unique_for: ClassVar[timedelta | float | None] = None

    # The Jobs app the class was last registered with (used by the classmethod shortcuts).
    _unified_jobs_app: ClassVar[Jobs | None] = None

    def __init__(self, ctx: Any = None, job_id: str | None = None) -> None:
        #: The shared context given to ``Jobs(..., context=...)``.
        self.ctx = ctx
        #: The id of the job being performed (the ``JobHandle.id`` / Celery task id).
        self.job_id = job_id
        #: Which try this is: 1 for the first, 2 for the first retry.
        self.attempt = 1
        self._cancel_token: CancelToken | None = None

    def cancelled(self) -> bool:
        """True once ``jobs.cancel(...)`` asked this job to stop (or its time limit passed).

        A sync ``perform`` that does long work should check it and return early; an
        ``async def perform`` is cancelled at its next ``await`` instead (``CancelledError``).
        """
        return self._cancel_token is not None and self._cancel_token.cancelled()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = f"{cls.__module__}.{cls.__qualname__}"
        elif not isinstance(cls.__dict__["name"], str) or not cls.__dict__["name"]:
            raise WorkerDefinitionError(f"{cls.__qualname__}.name must be a non-empty string")
        if isinstance(cls.tags, str):
            raise WorkerDefinitionError(
                f"{cls.__qualname__}.tags must be a tuple of strings, e.g. tags = ({cls.tags!r},)"
            )
        cls.tags = tuple(cls.tags)
        cls._queue_named = "queue" in cls.__dict__ or cls._queue_named  # inherited from a base
        if not isinstance(cls.queue, str) or not cls.queue:
            raise WorkerDefinitionError(f"{cls.__qualname__}.queue must be a non-empty string")
        cls._unified_jobs_app = None
        if cls.retry is not None and not isinstance(cls.retry, Retry):
            raise WorkerDefinitionError(
                f"{cls.__qualname__}.retry must be a unified_jobs.Retry, e.g. retry = Retry(max_attempts=3), "
                f"got {cls.retry!r}"
            )
        _positive_seconds(cls, "time_limit", "None for no limit")
        _positive_seconds(cls, "unique_for", "None: not unique unless perform_later gives a unique_key")
        model = _args_model_from_bases(cls)
        if model is not None:
            cls.args_model = model

    # -- the job ---------------------------------------------------------------------------

    def perform(self, args: Args) -> Awaitable[None] | None:
        """Do the work. Override it; ``async def perform`` is supported too."""
        raise NotImplementedError

    # -- enqueueing shortcuts ----------------------------------------------------------------

    @classmethod
    def perform_later(
        cls,
        args: Args | dict[str, Any],
        *,
        wait: timedelta | None = None,
        run_at: datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        unique_key: str | None = None,
        transaction: Any = None,
    ) -> JobHandle:
        """Enqueue a job on the app this worker is registered with. See ``Jobs.perform_later``."""
        return cls._app().perform_later(
            cls,
            args,
            wait=wait,
            run_at=run_at,
            queue=queue,
            priority=priority,
            unique_key=unique_key,
            transaction=transaction,
        )

    @classmethod
    def perform_all_later(
        cls,
        args_list: Iterable[Args | dict[str, Any]],
        *,
        wait: timedelta | None = None,
        run_at: datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        transaction: Any = None,
    ) -> list[JobHandle]:
        """Enqueue many jobs at once; see ``Jobs.perform_all_later``."""
        return cls._app().perform_all_later(
            cls, args_list, wait=wait, run_at=run_at, queue=queue, priority=priority, transaction=transaction
        )

    @classmethod
    async def aperform_later(
        cls,
        args: Args | dict[str, Any],
        *,
        wait: timedelta | None = None,
        run_at: datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        unique_key: str | None = None,
    ) -> JobHandle:
        """Async form of ``perform_later``; see ``Jobs.aperform_later``."""
        return await cls._app().aperform_later(
            cls, args, wait=wait, run_at=run_at, queue=queue, priority=priority, unique_key=unique_key
        )

    @classmethod
    def _app(cls) -> Jobs:
        app = cls._unified_jobs_app
        if app is None:
            raise NotRegisteredError(
                f"worker {cls.name!r} is not registered; call jobs.register({cls.__qualname__}) "
                "(or decorate the class with @jobs.register) before enqueueing it"
            )
        return app

    @classmethod
    def _check_definition(cls) -> None:
        """Raise ``WorkerDefinitionError`` unless the class can be registered."""
        model = getattr(cls, "args_model", None)
        if model is None:
            raise WorkerDefinitionError(
                f"{cls.__qualname__} has no arguments model; " + _EXAMPLE.format(name=cls.__name__)
            )
        if cls.perform is Worker.perform:
            raise WorkerDefinitionError(
                f"{cls.__qualname__} does not implement perform(self, args); "
                + _EXAMPLE.format(name=cls.__name__)
            )

    @classmethod
    def is_async(cls) -> bool:
        """True when ``perform`` is an ``async def``."""
        return inspect.iscoroutinefunction(cls.perform)


def _positive_seconds(cls: type, attr: str, unset: str) -> None:
    """Check that ``cls.<attr>`` is None, or a positive timedelta or number of seconds."""
    what = f"{cls.__qualname__}.{attr}"
    try:
        value = seconds(getattr(cls, attr), what)
    except (TypeError, ValueError) as exc:
        raise WorkerDefinitionError(str(exc)) from None
    if value == 0:
        raise WorkerDefinitionError(f"{what} must be positive (or {unset})")


def _args_model_from_bases(cls: type) -> type[BaseModel] | None:
    for base in getattr(cls, "__orig_bases__", ()):
        origin = get_origin(base)
        if not (isinstance(origin, type) and issubclass(origin, Worker)):
            continue
        params = get_args(base)
        if not params or isinstance(params[0], TypeVar):
            return None  # generic intermediate class: checked at registration
        param = params[0]
        if not (isinstance(param, type) and issubclass(param, BaseModel)):
            raise WorkerDefinitionError(
                f"{cls.__qualname__}: Worker[{getattr(param, '__name__', param)!s}] needs a "
                "pydantic model as its parameter; " + _EXAMPLE.format(name=cls.__name__)
            )
        return param
    return None
