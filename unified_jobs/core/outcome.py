"""``Outcome``: what one attempt of a job came to, for its adapter to settle."""

from __future__ import annotations

import traceback as tb
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

__all__ = ["Outcome", "OutcomeKind", "describe_error"]

#: succeeded: done. retry: run again at ``retry_at``. failed: give up (kept in the failed store).
#: rejected: the job cannot run at all (unknown worker, arguments that do not validate).
#: cancelled: ``jobs.cancel`` stopped it (or it was cancelled before it started).
OutcomeKind = Literal["succeeded", "retry", "failed", "rejected", "cancelled"]


def describe_error(error: BaseException) -> tuple[str, str]:
    """``("Type: message", traceback text)`` of an exception."""
    text = f"{type(error).__name__}: {error}"
    trace = "".join(tb.format_exception(type(error), error, error.__traceback__))
    return text, trace


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

    @property
    def ok(self) -> bool:
        return self.kind == "succeeded"

    @classmethod
    def from_error(
        cls, kind: OutcomeKind, error: BaseException, attempt: int, *, note: str = "", **extra: Any
    ) -> Outcome:
        text, trace = describe_error(error)
        return cls(kind, attempt, error=error, error_text=text + note, traceback=trace, **extra)
