"""Workers the toolkit's unit tests enqueue. ``CALLS`` records what ran, in order."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from pydantic import BaseModel

from unified_jobs import Worker

CALLS: list[tuple[str, Any]] = []
_lock = threading.Lock()


def record(name: str, value: Any) -> None:
    with _lock:
        CALLS.append((name, value))


class EmailArgs(BaseModel):
    user_id: int
    template: str = "welcome"


class WelcomeEmail(Worker[EmailArgs]):
    queue = "mail"

    def perform(self, args: EmailArgs) -> None:
        record("WelcomeEmail", args.user_id)


class SignupArgs(BaseModel):
    user_id: int


class Signup(Worker[SignupArgs]):
    """Enqueues a WelcomeEmail, as a job that enqueues jobs."""

    def perform(self, args: SignupArgs) -> None:
        record("Signup", args.user_id)
        WelcomeEmail.perform_later({"user_id": args.user_id})


class CountdownArgs(BaseModel):
    n: int


class Countdown(Worker[CountdownArgs]):
    """Enqueues itself with n - 1 until 0: a chain of n + 1 jobs."""

    def perform(self, args: CountdownArgs) -> None:
        record("Countdown", args.n)
        if args.n > 0:
            Countdown.perform_later({"n": args.n - 1})


class Forever(Worker[CountdownArgs]):
    """Enqueues itself without end."""

    def perform(self, args: CountdownArgs) -> None:
        Forever.perform_later({"n": args.n + 1})


class Boom(Worker[SignupArgs]):
    def perform(self, args: SignupArgs) -> None:
        raise RuntimeError(f"boom {args.user_id}")


class AsyncReport(Worker[SignupArgs]):
    async def perform(self, args: SignupArgs) -> None:
        await asyncio.sleep(0)
        record("AsyncReport", (args.user_id, id(asyncio.get_running_loop())))


ALL = (WelcomeEmail, Signup, Countdown, Forever, Boom, AsyncReport)
