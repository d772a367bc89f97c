"""The worker side of a job's delivery: Celery's ``Request`` taught the job's caps, and the
thread that passes cancel requests to the jobs running in a worker process."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from celery import Celery
from celery.exceptions import Ignore, Retry, WorkerLostError
from celery.utils.serialization import UnpickleableExceptionWrapper
from celery.worker.request import Request

from unified_jobs.adapters.celery import draining
from unified_jobs.core.outcome import error_path
from unified_jobs.errors import JobError, WorkerLost

if TYPE_CHECKING:
    from unified_jobs.adapters.celery.app import CeleryBridge

__all__ = [
    "BRIDGE_ATTRIBUTE",
    "ERROR_CLASS_ATTRIBUTE",
    "AlreadySettled",
    "JobCancelled",
    "JobRequest",
    "bridge_of",
    "cancel_watch",
    "error_class_of",
    "worker_lost_text",
]

logger = logging.getLogger(__name__)

#: The attribute of a Celery app that holds its ``CeleryBridge``.
BRIDGE_ATTRIBUTE = "unified_jobs_bridge"
#: The attribute of an exception raised in place of a job's own (a ``Reject``, a ``JobError``
#: around a ``SystemExit``) that holds the job's error class path (or None: unknown).
ERROR_CLASS_ATTRIBUTE = "unified_jobs_error_class"
_UNMARKED = object()


def error_class_of(exception: BaseException) -> str | None:
    """The dotted class path of the exception a job failed with, as the worker's main process
    received it (pickled from a pool process): the one noted by the pool process, else its
    own class' (an exception that did not pickle: the class Celery names)."""
    marked = getattr(exception, ERROR_CLASS_ATTRIBUTE, _UNMARKED)
    if marked is not _UNMARKED:
        return marked if isinstance(marked, str) else None
    if isinstance(exception, UnpickleableExceptionWrapper):
        return f"{exception.exc_module}.{exception.exc_cls_name}"
    return error_path(exception)


def worker_lost_text(deliveries: int, limit: int) -> str:
    """Why a job whose worker process died on each delivery is failed (``WorkerLost``)."""
    return f"the worker process died on each of {deliveries} deliveries (workers.max_deliveries is {limit})"


def bridge_of(app: Celery) -> CeleryBridge | None:
    """The bridge that owns (or adopted) ``app``; None for any other app."""
    bridge: CeleryBridge | None = getattr(app, BRIDGE_ATTRIBUTE, None)
    return bridge


class JobCancelled(Ignore):  # type: ignore[misc]
    """The job was cancelled (``jobs.cancel``): Celery acks it as ignored, and the SQL queue
    writes its row cancelled."""


class AlreadySettled(Ignore):  # type: ignore[misc]
    """This attempt of the job already ended (its job store says so): the delivery repeats a
    message whose ack was lost. Celery acks it as ignored; the job does not run again."""


class JobRequest(Request):  # type: ignore[misc]
    """Celery's worker-side request (it runs in the worker's main process, which owns the
    broker channel), taught three things:

    - why a job failed reaches the SQL queue's row (``last_error``, with the traceback, and
      ``error_class``);
    - a job whose pool process died is requeued only until ``workers.max_deliveries``
      deliveries have ended so, then failed with ``WorkerLost`` (plain Celery, with
      ``task_reject_on_worker_lost``, requeues it for ever);
    - a retried job's old SQL row is superseded by the republished one;
    - a cancelled job's SQL row says cancelled.
    """

    def _bridge(self) -> CeleryBridge | None:
        return bridge_of(self.task.app)

    def _queue(self) -> str:
        """The queue the job was delivered from (for the metrics' ``queue`` label)."""
        return str((self.delivery_info or {}).get("routing_key") or "")

    def _note(self, error: str, error_class: str | None = None) -> None:
        note = getattr(getattr(self._message, "channel", None), "note_failure", None)
        if note is not None:
            note(self._message.delivery_tag, error, error_class)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exception = getattr(exc_info, "exception", None)
        if isinstance(exception, ExceptionWithTraceback):
            exception = exception.exc
        if isinstance(exception, JobCancelled):
            cancelled = getattr(getattr(self._message, "channel", None), "note_cancelled", None)
            if cancelled is not None:
                cancelled(self._message.delivery_tag)
        bridge = self._bridge()
        lost = isinstance(exception, (WorkerLostError, SystemExit, KeyboardInterrupt))
        # What the attempt died of is unknown when its process did.
        error_class = None if lost or exception is None else error_class_of(exception)
        if lost and bridge is not None and bridge.kind is not None and self.task.reject_on_worker_lost:
            deliveries = bridge.kind.lost_deliveries(self.id, self._message.delivery_tag)
            limit = bridge.config.workers.max_deliveries
            if deliveries < limit:
                return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
            try:
                raise WorkerLost(f"{worker_lost_text(deliveries, limit)}: {exception!r}")
            except WorkerLost as final:
                exc_info, exception, error_class = ExceptionInfo(), final, None
            bridge.record_failure(
                self.id, self.task.name, exception, str(exc_info.traceback), queue=self._queue()
            )
        if isinstance(exception, draining.HandedBack):
            logger.warning("job %s (%s) %s", self.id, self.task.name, exception)
            return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        if exception is not None and not isinstance(exception, (Retry, Ignore)):
            trace = getattr(exc_info, "traceback", "") or ""
            self._note(f"{type(exception).__name__}: {exception}\n\n{trace}".rstrip(), error_class)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def on_retry(self, exc_info: Any) -> Any:
        supersede = getattr(getattr(self._message, "channel", None), "note_superseded", None)
        if supersede is not None:
            supersede(self._message.delivery_tag)
        return super().on_retry(exc_info)

    def on_timeout(self, soft: bool, timeout: float) -> Any:
        if not soft:
            self._note(f"TimeLimitExceeded: the pool process was killed after {timeout}s")
            bridge = self._bridge()
            if bridge is not None:
                error = JobError(f"TimeLimitExceeded: the pool process was killed after {timeout}s")
                bridge.record_failure(self.id, self.task.name, error, "", queue=self._queue())
        return super().on_timeout(soft, timeout)


class _CancelWatch:
    """In each worker process, a thread that asks the job store every second whether someone
    cancelled one of the jobs running here (``jobs.cancel`` from another process)."""

    def __init__(self) -> None:
        self._pid = 0
        self._lock = threading.Lock()

    def ensure(self, bridge: CeleryBridge) -> None:
        if self._pid == os.getpid() or bridge.kind is None:
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            thread = threading.Thread(
                target=self._watch, args=(bridge,), name="unified-jobs-cancel", daemon=True
            )
            thread.start()

    @staticmethod
    def _watch(bridge: CeleryBridge) -> None:
        assert bridge.kind is not None
        store = bridge.kind.store
        while True:
            time.sleep(1.0)
            running = list(bridge.executor.running)
            if not running:
                continue
            try:
                for job_id in store.cancel_requested(running):
                    bridge.executor.cancel(job_id)
            except Exception:
                logger.warning("could not read cancel requests from the job store", exc_info=True)


#: One watcher per worker process.
cancel_watch = _CancelWatch()
