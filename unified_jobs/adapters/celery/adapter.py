"""BackgroundQueue: jobs are published as Celery (protocol 2) messages to Redis, PostgreSQL or
SQLite, and run in worker processes (``unified-jobs start --worker`` or ``celery worker``).
What differs between kinds is in ``adapters/celery/kinds``."""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from kombu.exceptions import BatchPublishError, OperationalError

from unified_jobs._uri import mask_text, mask_uri, password_pieces, uri_secrets
from unified_jobs.adapters.base import Adapter, Capabilities, describe
from unified_jobs.adapters.celery.lean_publish import LeanPublisher
from unified_jobs.adapters.celery.publish_retry import bounded, timeout_in
from unified_jobs.adapters.sql.engine import libpq_connect_timeout
from unified_jobs.adapters.sql.publishing import UNIQUE_HEADER, UNIQUE_UNTIL_HEADER, current, publishing
from unified_jobs.core.executor import Executor
from unified_jobs.core.job import TAGS_HEADER, Job
from unified_jobs.errors import EnqueueError

if TYPE_CHECKING:
    from unified_jobs.adapters.celery.app import CeleryBridge
    from unified_jobs.adapters.celery.kinds import QueueKind
    from unified_jobs.scheduler.state import ScheduleState

__all__ = ["CeleryQueueAdapter"]

logger = logging.getLogger(__name__)


class CeleryQueueAdapter(Adapter):
    kind: ClassVar[str] = "BackgroundQueue"
    #: The app's own Celery tasks publish as plain Celery does.
    publishes_to_celery: ClassVar[bool] = True

    def __init__(self, bridge: CeleryBridge, executor: Executor) -> None:
        assert bridge.kind is not None
        self._bridge = bridge
        self._kind: QueueKind = bridge.kind
        self._queue = bridge.kind.queue
        self.executor = executor
        self.store = bridge.kind.store
        self.capabilities = Capabilities(cancel_running=bridge.kind.cancel_running)  # type: ignore[misc]
        self._lean = LeanPublisher(bridge.app, own_router=bridge._route)

    def _record(self, jobs: list[Job], what: str) -> None:
        try:
            self.store.record_enqueued(jobs)
        except Exception as exc:  # the store's server (the broker's, or queue.store_uri) is down
            self._forget(jobs, exc)  # the records written before it failed (out of memory)
            raise self._error(what, exc, store=True) from None

    def enqueue(self, job: Job) -> None:
        what = f"job {job.id} ({job.name})"
        if self._leans([job]):
            # The message built here, pushed with the job's record in one command (Redis).
            key, message = self._lean_message(job)
            try:
                self._kind.push_now(job, key, message)
            except Exception as exc:  # the broker (the job store's server too) is down or hung
                raise self._error(what, exc) from None
            return
        if (
            job.unique_key is None
            and current() is None
            and self._kind.inserts_batches
            and self._lean.usable(job)
        ):
            # SQL: the row written as a batch's are, its message built here (not send_task).
            self._enqueue_batch([job], what)
            return
        together = self._kind.record_with_publish([job])
        if together is None:
            self._record([job], what)
        try:
            if together is None:
                self._publish(job)
            else:  # the record and the message in one transaction (Redis): nothing to forget
                with together as rider:
                    self._publish(job)
                if rider.pending:  # published by another transport (an app's own broker_transport?)
                    logger.warning("job %s: its message did not go through the queue's transport", job.id)
                    self._record([job], what)
        except (OperationalError, OSError) as exc:
            self._forget([job], exc)
            raise self._error(what, exc) from None

    def _leans(self, jobs: list[Job]) -> bool:
        """Whether ``jobs`` (due now) go to the kind's ``push_now``/``push_many`` with messages
        built by ``lean_publish``, not through ``send_task``."""
        kind, lean = self._kind, self._lean
        return kind.pushes_now and all(job.run_at is None and lean.usable(job) for job in jobs)

    def _lean_message(self, job: Job) -> tuple[str, str]:
        """(list key, text) of ``job``'s message on Redis."""
        priority, payload = self._message(job)
        return self._lean.list_key(job.queue, priority), payload

    def _message(self, job: Job) -> tuple[int, str]:
        """(the priority, the JSON text) of ``job``'s message, built by ``lean_publish`` with
        ``send_task``'s options."""
        options = self._options(job)
        priority = options["priority"]
        return priority, self._lean.payload(job, options.get("headers", {}), priority)

    def enqueue_many(self, jobs: list[Job]) -> None:
        self._enqueue_batch(jobs, f"{len(jobs)} jobs")

    def _enqueue_batch(self, jobs: list[Job], what: str) -> None:
        if self._leans(jobs):
            # Every record and message in one MULTI/EXEC (Redis): all of them or none.
            messages = [self._lean_message(job) for job in jobs]
            try:
                self._kind.push_many(jobs, messages)
            except Exception as exc:  # the broker (the job store's server too) is down, hung or full
                raise self._error(what, exc) from None
            return
        app = self._bridge.app
        self._record(jobs, what)
        lean = self._lean
        # SQL: every row in one INSERT statement, the messages built here.
        one_insert = self._kind.inserts_batches and all(
            job.unique_key is None and lean.usable(job) for job in jobs
        )
        try:
            # bounded(): a hung server ends the batch at its first timeout, here too (where
            # the producer's channel connects, before any publish).
            with bounded(), app.producer_or_acquire() as producer:
                if one_insert and len(jobs) == 1:  # SQL: one row, one statement in autocommit
                    self._kind.insert_one(producer, jobs[0], *self._message(jobs[0]))
                    return
                self._publish_batch(producer, jobs, one_insert)
        except (OperationalError, OSError, BatchPublishError) as exc:
            self._forget(jobs, exc)
            raise self._error(what, exc) from None

    def _publish_batch(self, producer: Any, jobs: list[Job], one_insert: bool) -> None:
        """``jobs``' messages, all or none: in one SQL transaction (one statement if
        ``one_insert``), else in one flush of the transport's own."""
        with self._kind.batch_transaction(producer) as connection:
            if connection is not None:  # SQL: every row in one transaction
                if one_insert:
                    rows = [(job, *self._message(job)) for job in jobs]
                    producer.channel.put_many(rows, connection)
                    return
                with publishing(connection):
                    for job in jobs:
                        self._publish(job, producer)
                return
            # One flush for the whole batch: on Redis a MULTI/EXEC pipeline, all or nothing.
            with producer.batch(max_size=2 * len(jobs) + 1):
                for job in jobs:
                    self._publish(job, producer)

    def enqueue_unique(self, jobs: list[Job]) -> dict[str, str]:
        if not self._kind.unique_in_transport:
            return super().enqueue_unique(jobs)  # the job store takes the keys first
        # The queue's unique index decides, row by row, as the rows are inserted.
        with publishing() as state:
            self.enqueue_all(jobs)
        return state.refused

    def enqueue_in_transaction(self, transaction: Any, jobs: list[Job]) -> dict[str, str]:
        connection = self._kind.transaction_connection(transaction)
        if connection is None:
            return super().enqueue_in_transaction(transaction, jobs)  # after the commit
        # The queue is the caller's database: the rows are written in the caller's transaction.
        what = describe(jobs)
        with publishing(connection) as state:
            try:
                for job in jobs:
                    self._publish(job)
            except (OperationalError, OSError) as exc:
                raise EnqueueError(
                    f"could not write {what} in the caller's transaction on {self._queue.kind} at "
                    f"{mask_uri(self._queue.uri)}: {exc}; roll the transaction back, nothing of it "
                    "can be committed now"
                ) from None
        return state.refused

    def _forget(self, jobs: list[Job], exc: BaseException) -> None:
        """Delete the store's records of jobs whose enqueue failed with ``exc``; not after a
        timeout (the store's server is the one that hangs, and the bound is one timeout): those
        records, like those of a store that is down, expire."""
        if timeout_in(exc) is not None:
            return
        with contextlib.suppress(Exception):
            self.store.forget_enqueued(jobs)

    def _options(self, job: Job) -> dict[str, Any]:
        """``send_task``'s options for ``job``: priority, custom headers, retry."""
        options: dict[str, Any] = {"priority": self._kind.publish_priority(job.priority or 0)}
        worker_cls = self.executor.worker_class(job.name)
        headers: dict[str, Any] = {}
        if worker_cls is not None and worker_cls.tags:
            # Celery keeps custom headers in the message; the job's tags survive a dump/import.
            headers[TAGS_HEADER] = list(worker_cls.tags)
        if job.unique_key is not None and self._kind.unique_in_transport:
            # Retries keep them too (Celery copies a request's custom headers).
            headers[UNIQUE_HEADER] = job.unique_key
            until = job.enqueued_at + timedelta(seconds=job.unique_for or 0.0)
            headers[UNIQUE_UNTIL_HEADER] = until.isoformat()
        if self.executor.observers:
            # The trace context (``traceparent``), read back in the worker: the job's perform
            # span is a child of the enqueue span current now. Retries keep the headers.
            self.executor.inject(headers)
        if headers:
            options["headers"] = headers
        state = current()
        if state is not None and state.connection is not None:
            # Written in a transaction (a batch's, the caller's): a failed write has aborted
            # it, so trying again in it cannot succeed; the error is the first one.
            options["retry"] = False
        return options

    def _publish(self, job: Job, producer: Any = None) -> None:
        options = self._options(job)
        self._bridge.app.send_task(
            job.name,
            args=json.loads(job.args_json),
            kwargs=json.loads(job.kwargs_json),
            task_id=job.id,
            queue=job.queue,
            eta=job.run_at,
            producer=producer,
            **options,
        )

    def _error(self, what: str, exc: BaseException, *, store: bool = False) -> EnqueueError:
        """``EnqueueError`` naming the server that failed (the job store's, when it is not the
        broker's), password masked, and what to check."""
        queue = self._queue
        if store and queue.store_uri is not None:
            where = (
                f"the job store (queue.store_uri) of the {queue.kind} queue at {mask_uri(queue.store_uri)}"
            )
        else:
            where = f"{queue.kind} at {mask_uri(queue.uri)}"
        tail = "Nothing was enqueued."
        timeout = timeout_in(exc)
        if timeout is None:
            hint = "is it running and reachable?"
        elif queue.kind == "Sqlite":
            hint = (
                "another connection held the database's write lock past the busy timeout: check for "
                "a long transaction on it, or a file on a network share"
            )
        else:
            connect = f"{queue.connect_timeout} ms"
            if queue.kind == "Postgres":  # libpq's connect_timeout: whole seconds, at least 2
                connect += f", {libpq_connect_timeout(queue.connect_timeout_sec)} s for libpq"
            hint = (
                f"it did not answer within queue.connect_timeout ({connect}) or "
                f"queue.read_timeout ({queue.read_timeout} ms): check that it is running, not stuck "
                "or overloaded, and reachable from here (host, port, firewall)"
            )
            if not store:  # the job may have been sent, and the answer was what was late
                tail = "Nothing was enqueued, unless the server took the job and only its answer was late."
        uris = [queue.uri, *([queue.store_uri] if queue.store_uri else [])]
        secrets = [secret for uri in uris for secret in uri_secrets(uri)]
        pieces = [piece for uri in uris for piece in password_pieces(uri)]
        detail = mask_text(_first_line(exc if timeout is None else timeout), secrets, pieces)
        return EnqueueError(f"could not enqueue {what} on {where}: {detail}; {hint}. {tail}")

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        # Nothing to drain: jobs are in the broker. kombu's producer pools are process-wide
        # (shared by every app on the same broker URL), so they are left for the process' exit.
        state = self.__dict__.get("_schedule_state")
        if state is not None:
            state.close()

    def _make_schedule_state(self) -> ScheduleState:
        """The queue kind's schedule state, in the queue's own store, shared by every scheduler
        of the queue."""
        state: ScheduleState = self._kind.make_schedule_state()
        return state


def _first_line(exc: BaseException) -> str:
    """What ``exc`` says, on one line: a SQLAlchemy error's driver error, without the hints
    and links the drivers add on further lines."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0].strip().rstrip(".") if text else type(exc).__name__
