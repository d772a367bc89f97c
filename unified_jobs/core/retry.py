"""``Retry``: when a failed attempt runs again, and when it never does.

A small value object in the manner of procrastinate's ``RetryStrategy``: the executor asks it
"retry, after how long, or fail?" and each adapter only stores the answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

__all__ = ["NO_RETRY", "Retry", "RetryRequested", "seconds"]

Decision = Literal["retry", "fail", "discard"]


def seconds(value: timedelta | float | int | None, what: str) -> float | None:
    """``value`` in seconds (a timedelta or a number); ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    else:
        raise TypeError(f"{what} takes a datetime.timedelta or a number of seconds, got {value!r}")
    if result < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return result


def _exception_types(value: Any, what: str) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise TypeError(f"Retry({what}=...) takes exception classes, got {t!r}")
    return types


class RetryRequested(Exception):
    """Raised by a job's runner when the job itself asked to run again at ``at`` (an adopted
    Celery task's ``self.retry(countdown=...)``, ``autoretry_for``): the executor retries it
    then, whatever the worker's policy says. ``cause`` is the error that made it retry."""

    def __init__(self, at: datetime, cause: BaseException | None = None) -> None:
        super().__init__(f"retry requested at {at.isoformat()}: {cause!r}")
        self.at = at
        self.cause = cause


@dataclass(frozen=True)
class Retry:
    """How a worker's failed attempts are retried.

    ``max_attempts`` counts every try, the first included (``Retry(max_attempts=3)``: the job
    runs at most 3 times). The wait before retry ``n`` (1 for the first retry) is
    ``wait * backoff ** (n - 1)``, capped at ``max_wait``; ``jitter`` adds up to a quarter more,
    never less, so that failing jobs do not retry in lockstep. Only exceptions in ``retry_on``
    are retried; one in ``discard_on`` fails the job at once, whatever the attempts left.
    """

    max_attempts: int = 3
    wait: timedelta | float = timedelta(seconds=1)
    backoff: float = 2.0
    max_wait: timedelta | float = timedelta(hours=1)
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] | type[BaseException] = (Exception,)
    discard_on: tuple[type[BaseException], ...] | type[BaseException] = ()

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ValueError(f"Retry(max_attempts=...) takes an int >= 1, got {self.max_attempts!r}")
        seconds(self.wait, "Retry(wait=...)")
        seconds(self.max_wait, "Retry(max_wait=...)")
        if not isinstance(self.backoff, (int, float)) or isinstance(self.backoff, bool) or self.backoff < 1:
            raise ValueError(
                f"Retry(backoff=...) takes a number >= 1 (1: constant waits), got {self.backoff!r}"
            )
        object.__setattr__(self, "retry_on", _exception_types(self.retry_on, "retry_on"))
        object.__setattr__(self, "discard_on", _exception_types(self.discard_on, "discard_on"))

    def decide(self, error: BaseException, attempt: int) -> Decision:
        """What to do after attempt number ``attempt`` (1-based) raised ``error``."""
        if isinstance(error, self.discard_on):
            return "discard"
        if attempt < self.max_attempts and isinstance(error, self.retry_on):
            return "retry"
        return "fail"

    def computed_wait(self, attempt: int) -> float:
        """Seconds to wait after attempt ``attempt`` failed, before jitter."""
        wait = seconds(self.wait, "wait") or 0.0
        cap = seconds(self.max_wait, "max_wait")
        value = wait * float(self.backoff) ** max(0, attempt - 1)
        return min(value, cap) if cap is not None else value

    def delay(self, attempt: int) -> float:
        """Seconds to wait after attempt ``attempt`` failed (jitter included)."""
        base = self.computed_wait(attempt)
        return base + random.uniform(0, base / 4) if self.jitter else base


#: The default: a failed attempt fails the job.
NO_RETRY = Retry(max_attempts=1, wait=0, jitter=False)
