"""``Outcome``: what one attempt of a job came to, for its adapter to settle."""

from __future__ import annotations

import json
import logging
import traceback as tb
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

__all__ = ["RESULT_LIMIT", "Outcome", "OutcomeKind", "describe_error", "error_path", "result_json"]

logger = logging.getLogger(__name__)

#: The largest return value a job store keeps: this many characters of JSON text (1 MiB; the
#: text is ASCII, ``json.dumps``' default, so as many bytes). A bigger one is not kept.
RESULT_LIMIT = 1_048_576

#: succeeded: done. retry: run again at ``retry_at``. failed: give up (kept in the failed store).
#: rejected: the job cannot run at all (unknown worker, arguments that do not validate).
#: cancelled: ``jobs.cancel`` stopped it (or it was cancelled before it started).
OutcomeKind = Literal["succeeded", "retry", "failed", "rejected", "cancelled"]


def describe_error(error: BaseException) -> tuple[str, str]:
    """``("Type: message", traceback text)`` of an exception."""
    text = f"{type(error).__name__}: {error}"
    trace = "".join(tb.format_exception(type(error), error, error.__traceback__))
    return text, trace


def error_path(error: BaseException) -> str:
    """The dotted path of ``error``'s class: ``builtins.ValueError``, ``myapp.jobs.Declined``."""
    cls = type(error)
    return f"{cls.__module__}.{cls.__qualname__}"


def result_json(value: Any, job_id: str) -> str | None:
    """What a job store keeps of the value a job's ``perform`` returned: its JSON text
    (``json.dumps``, so ``json.loads`` of it is ``json.loads(json.dumps(value))``), or ``None``
    when it returned ``None``, or a value that is not JSON-serializable or whose JSON is longer
    than ``RESULT_LIMIT`` (those are logged at WARNING, naming the job; the job still
    completed)."""
    if value is None:
        return None
    try:
        text = json.dumps(value)
    except Exception as exc:  # TypeError, ValueError (a cycle), RecursionError, a subclass' own
        logger.warning(
            "job %s returned a %s, which is not JSON-serializable (%s): its result is not kept",
            job_id,
            type(value).__qualname__,
            exc,
        )
        return None
    if len(text) > RESULT_LIMIT:
        logger.warning(
            "job %s returned a %s whose JSON has %d characters, more than the %d kept: its result "
            "is not kept",
            job_id,
            type(value).__qualname__,
            len(text),
            RESULT_LIMIT,
        )
        return None
    return text


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    #: Which attempt this was (1-based).
    attempt: int = 1
    #: ``perform``'s return value (succeeded).
    value: Any = None
    #: The exception (retry, failed, rejected; cancelled when perform raised it).
    error: BaseException | None = None
    #: ``"Type: message"``, and why the job was failed where that adds something.
    error_text: str | None = None
    traceback: str | None = None
    #: When the next attempt is due (retry), and the wait in seconds.
    retry_at: datetime | None = None
    delay: float = 0.0
    #: ``error_path`` of the exception (set by ``from_error``), or ``None`` where the attempt's
    #: own exception is unknown (its worker process died, a hard time limit killed it).
    error_class: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "succeeded"

    @classmethod
    def from_error(
        cls, kind: OutcomeKind, error: BaseException, attempt: int, *, note: str = "", **extra: Any
    ) -> Outcome:
        """The outcome of an attempt that raised ``error`` (``error_class=None`` in ``extra``
        where the exception is not the attempt's own, such as a ``WorkerLost``)."""
        text, trace = describe_error(error)
        if "error_class" not in extra:
            extra["error_class"] = error_path(error)
        return cls(kind, attempt, error=error, error_text=text + note, traceback=trace, **extra)
