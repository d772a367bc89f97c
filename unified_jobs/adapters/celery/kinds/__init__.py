"""Queue kinds as plug-ins: each module gives a ``QueueKind`` (broker settings, priority
mapping, job store, delivery counting, health checks, and what ``unified-jobs jobs`` can see).
Adding a kind is one module and one entry here; no other module tests a kind's name."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from unified_jobs._faults import fault_in

if TYPE_CHECKING:
    from unified_jobs.config import QueueConfig, WorkersConfig
    from unified_jobs.core.job import Job
    from unified_jobs.core.outcome import Outcome
    from unified_jobs.core.store import JobStore
    from unified_jobs.scheduler.state import ScheduleState

__all__ = ["KINDS", "Check", "QueueKind", "kind_for", "not_answering", "short_connection"]

#: One line of ``doctor``: ("ok" | "warn" | "fail", topic, message).
Check = tuple[Literal["ok", "warn", "fail"], str, str]

#: Kind name (``queue.kind``) -> ``module:attribute`` of its ``QueueKind``.
KINDS: dict[str, str] = {
    "Redis": "unified_jobs.adapters.celery.kinds.redis:RedisKind",
    "Postgres": "unified_jobs.adapters.celery.kinds.sql:SqlKind",
    "Sqlite": "unified_jobs.adapters.celery.kinds.sql:SqlKind",
    "RabbitMQ": "unified_jobs.adapters.celery.kinds.rabbitmq:RabbitMQKind",
}


class QueueKind(ABC):
    """What differs between queue kinds, and nothing else."""

    #: Whether ``jobs.cancel`` can reach a job already running in a worker process.
    cancel_running: ClassVar[bool] = False
    #: Whether the queue itself keeps unique keys (a unique index over its job rows), so a
    #: unique job's key travels in its message; else the job store takes the keys first.
    unique_in_transport: ClassVar[bool] = False
    #: Whether a message its workers cannot run (unknown task, not a task, undecodable) is
    #: written to the job store as a failed job (``unrunnable``): where nothing else keeps it
    #: (the SQL kinds keep the message's row, failed).
    records_unrunnable: ClassVar[bool] = False
    #: Whether a job due now is enqueued by ``push_now`` (its message built by
    #: ``lean_publish``, not Celery's ``send_task``), where the app's settings allow it.
    pushes_now: ClassVar[bool] = False
    #: Whether a batch's rows go in one statement (``put_many`` of the SQL channel), which a
    #: single job without a unique key takes too, its message built by ``lean_publish``.
    inserts_batches: ClassVar[bool] = False

    def __init__(self, queue: QueueConfig, workers: WorkersConfig) -> None:
        self.queue = queue
        self.workers = workers
        self._store: JobStore | None = None

    @abstractmethod
    def broker_settings(self) -> dict[str, Any]:
        """``broker_url`` and ``broker_transport_options`` for Celery, and any other Celery
        setting the kind needs (e.g. ``task_queue_max_priority``)."""

    def worker_defaults(self) -> dict[str, Any]:
        """Celery settings the kind tunes, where the app still has Celery's default value."""
        return {}

    def publish_priority(self, priority: int) -> int:
        """Our priority (0-9, higher first) as the broker's message priority."""
        return priority

    @abstractmethod
    def make_store(self) -> JobStore:
        """The kind's job store."""

    @property
    def store(self) -> JobStore:
        if self._store is None:
            self._store = self.make_store()
        return self._store

    @abstractmethod
    def lost_deliveries(self, task_id: str, delivery_tag: Any) -> int:
        """Called in the worker's main process (or a ``--pool processes`` supervisor) when a
        job's worker process died: how many of the job's deliveries have now ended so (this
        one included)."""

    def fail_delivery(self, app: Any, job: Job, delivery_tag: str | None, error: str) -> None:
        """Called in a ``--pool processes`` supervisor for a job whose worker process it is
        killing (past the job's hard time limit) or that died on each of its deliveries, once
        the job store holds the failure: settle the job's message (delivered as
        ``delivery_tag`` to that process) as failed with ``error``, where the queue lets
        another process do so. The default does nothing: the broker delivers the message again
        (RabbitMQ, when the process' connection closes) and the job store says the attempt
        ended."""
        return None

    def requeue_lost(self, app: Any, job: Job, delivery_tag: str | None) -> None:
        """Called in a ``--pool processes`` supervisor when a worker process died running
        ``job`` (and ``lost_deliveries`` is under ``workers.max_deliveries``): put its message
        back in its queue now, where the queue lets another process do so, as prefork's main
        process does. The default does nothing: the broker requeues it (RabbitMQ, when the
        process' connection closes)."""
        return None

    @abstractmethod
    def health(self, *, fix: bool, timeout: float) -> list[Check]:
        """Whether the broker answers within ``timeout`` seconds (and, with ``fix``, repair
        what can be repaired, such as missing tables)."""

    def transaction_connection(self, transaction: Any) -> Any:
        """The SQLAlchemy connection of ``transaction`` if jobs can be written in it (the queue
        is that very database), else None: they are enqueued after it commits."""
        return None

    def push_now(self, job: Job, list_key: str, message: str) -> None:
        """Enqueue ``job`` (due now) with its store record and its ready-made ``message`` (as
        kombu's transport pushes it to ``list_key``) in one command. Only where ``pushes_now``."""
        raise NotImplementedError

    def push_many(self, jobs: list[Job], messages: list[tuple[str, str]]) -> None:
        """``push_now`` for a batch, all or nothing: ``messages`` holds each job's (list key,
        message). Only where ``pushes_now``."""
        raise NotImplementedError

    def record_with_publish(self, jobs: list[Job]) -> AbstractContextManager[Any] | None:
        """A block in which the next publish also writes the job store's records of ``jobs``,
        in the same transaction (one round trip), where the store lives in the broker; None
        (the default) where it does not: the records are written first, on their own. The
        block's value has ``pending``: true while the records are not written."""
        return None

    def record_outcome_with_publish(self, job: Job, outcome: Outcome) -> AbstractContextManager[Any] | None:
        """``record_with_publish`` for an attempt's ``outcome`` whose publish is the next
        attempt's message (a retry): a reader never sees the job ``retrying`` before its next
        attempt's message is where ``run_now`` and the monitor look for it."""
        return None

    @contextmanager
    def batch_transaction(self, producer: Any) -> Iterator[Any]:
        """A SQLAlchemy connection in a transaction of its own that a batch of ``producer``'s
        publishes is written in, committed at the end of the block and rolled back if it
        raises; None (the default) where the kind's batches are the transport's own (a
        MULTI/EXEC on Redis, an AMQP transaction on RabbitMQ)."""
        yield None

    def insert_one(self, producer: Any, job: Job, priority: int, payload: str) -> None:
        """Where ``inserts_batches``: write one job's message (built by ``lean_publish``) as
        one row, committed on return, through ``producer``'s transport."""
        raise NotImplementedError(f"the {type(self).__name__} kind inserts no rows")

    def job_table(self) -> Any:
        """The table of every job that the bulk ``jobs`` commands (list by status, requeue,
        tidy, purge, dump, import, cancel by name) work on, or None if the kind keeps none."""
        return None

    def queue_lengths(self, app: Any, names: list[str]) -> tuple[dict[str, int], dict[str, int]]:
        """For a kind without a job table: (queued, reserved by a worker) per queue name."""
        raise NotImplementedError(f"{type(self).__name__} has a job table; count its rows")

    def purge_queues(self, app: Any, names: list[str]) -> dict[str, int]:
        """Delete the jobs waiting in these queues (``dangerously_flush``; ``jobs purge`` on a
        kind without a job table); how many per queue."""
        with short_connection(app, write=True) as conn:
            channel = conn.default_channel
            return {name: int(channel.queue_purge(name) or 0) for name in names}

    def make_schedule_state(self) -> ScheduleState:
        """Where the schedulers of this queue compare-and-set each schedule's last tick: in the
        queue's own store, so that every scheduler process of the queue shares it."""
        from unified_jobs.errors import BackendNotAvailableError

        raise BackendNotAvailableError(
            f"queue kind {self.queue.kind} keeps no schedule state, so recurring jobs cannot run on "
            f"it; implement {type(self).__name__}.make_schedule_state()"
        )


#: A command's read of the broker (``jobs list``, ``jobs purge``, the dashboard's purge) retries a
#: connection that is refused this many times, right away: a server that is down is said so in
#: well under a second, not after kombu's default of retrying with 2 s sleeps for
#: ``broker_connection_timeout``. A try that times out (after the queue's ``connect_timeout``
#: or ``read_timeout``) is not retried.
SHORT_RETRIES = 1


def _give_up_on_timeout(exc: BaseException, interval: float) -> None:
    from unified_jobs.adapters.celery.publish_retry import timed_out

    if timed_out(exc):
        raise exc


@contextmanager
def short_connection(app: Any, *, write: bool = False) -> Iterator[Any]:
    """A connection of ``app`` to the broker, connected with at most ``SHORT_RETRIES`` quick
    retries and none after a timeout (the broker's errors are raised, as kombu's
    ``OperationalError``)."""
    with app.connection_for_write() if write else app.connection_for_read() as conn:
        conn.ensure_connection(
            _give_up_on_timeout,
            max_retries=SHORT_RETRIES,
            interval_start=0,
            interval_step=0.2,
            interval_max=0.2,
        )
        yield conn


def not_answering(where: str, exc: BaseException) -> str:
    """``doctor``'s line for a server that failed its check: a refused login is said so (it is
    up, and the credentials are wrong), anything else as a server that did not answer."""
    why = str(exc).rstrip(".") or type(exc).__name__
    if fault_in(exc) == "auth":
        return f"{where} refused the login: {why}; check the user name and password in its URI"
    return f"{where} did not answer: {why}; is it running and reachable?"


def kind_for(queue: QueueConfig, workers: WorkersConfig) -> QueueKind:
    module, _, attr = KINDS[queue.kind].partition(":")
    cls: type[QueueKind] = getattr(importlib.import_module(module), attr)
    return cls(queue, workers)
