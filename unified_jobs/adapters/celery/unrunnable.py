"""Messages a worker cannot run go to the failed jobs, with their raw body and the reason.

Celery's consumer logs such a message and rejects or acks it: a task no app registered
(``task_unknown``), a message that is not a Celery task (no ``task`` header: ``task_rejected``),
an invalid one (``task_rejected``), a body that does not decode (bad JSON, pickle or another
content type the app does not accept: ``on_decode_error``, which sends no signal). On the SQL
kinds the rejected row stays, failed; on Redis and RabbitMQ the message was gone, with only a
log line. Here the worker's main process also writes it to the job store as a failed job, so
``unified-jobs jobs failed`` and the dashboard show it (``jobs discard`` removes it).

A message without a task id gets one (``unrunnable-<uuid>``).
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import uuid4

from celery import signals
from celery.worker.consumer import Consumer as CeleryConsumer

from unified_jobs.adapters.celery.request import BRIDGE_ATTRIBUTE

__all__ = ["CONSUMER", "Consumer", "UnrunnableMessage", "install"]

logger = logging.getLogger(__name__)

#: The raw body kept of an unrunnable message, in characters.
BODY_LIMIT = 65_536
#: ``worker_consumer`` for an app whose workers record what they cannot run.
CONSUMER = "unified_jobs.adapters.celery.unrunnable:Consumer"
_CELERY_CONSUMER = "celery.worker.consumer:Consumer"


class UnrunnableMessage(Exception):
    """Why a worker could not run a message (the failed job's error)."""


def _raw(message: Any) -> str:
    body = getattr(message, "body", b"")
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body)
    return text if len(text) <= BODY_LIMIT else text[:BODY_LIMIT] + f"... ({len(text)} characters)"


def _record(
    app: Any, message: Any, reason: str, *, job_id: str | None = None, name: str | None = None
) -> None:
    bridge = getattr(app, BRIDGE_ATTRIBUTE, None)
    if bridge is None or bridge.kind is None or not bridge.kind.records_unrunnable:
        return
    headers = getattr(message, "headers", None) or {}
    job_id = job_id or str(headers.get("id") or "") or f"unrunnable-{uuid4()}"
    name = name or str(headers.get("task") or "") or "(no task header)"
    info = getattr(message, "delivery_info", None) or {}
    queue = str(info.get("routing_key") or "")
    try:
        bridge.record_unrunnable(job_id, name, queue, _raw(message), UnrunnableMessage(reason))
    except Exception:
        logger.exception("could not record the unrunnable message %s in the job store", job_id)
    else:
        logger.error("message %s (%s) cannot run, recorded as a failed job: %s", job_id, name, reason)


def _on_unknown(sender: Any = None, message: Any = None, name: Any = None, id: Any = None, **_: Any) -> None:
    reason = f"task {name!r} is not registered in the app of the worker that received it"
    _record(sender.app, message, reason, job_id=str(id) if id else None, name=str(name) if name else None)


def _on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    if exc is None:  # Celery's on_unknown_message: no task header, not a protocol 1 body
        reason = "not a Celery task message (no 'task' header, and the body is not a task)"
    else:
        reason = f"invalid task message: {type(exc).__name__}: {exc}"
    _record(sender.app, message, reason)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, recording a message whose body does not decode before acking it."""

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        content = getattr(message, "content_type", None)
        _record(self.app, message, f"the body does not decode ({content}): {type(exc).__name__}: {exc}")
        super().on_decode_error(message, exc)


def install(app: Any) -> None:
    """This app's workers record what they cannot run (an app with its own consumer class
    keeps it, and only gets the signals' cases)."""
    if app.conf.worker_consumer in (None, _CELERY_CONSUMER):
        app.conf.worker_consumer = CONSUMER


signals.task_unknown.connect(_on_unknown, weak=False)
signals.task_rejected.connect(_on_rejected, weak=False)
