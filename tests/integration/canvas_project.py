"""A small real Celery project, as Celery's own examples write one: ``bind``, ``update_state``,
``autoretry_for`` with ``retry_backoff``, ``countdown``, ``ignore_result``, links, chains, groups
and chords. ``make_app`` builds a fresh app (and, unless ``eager``, adopts it with a ``Jobs`` in
the given mode); ``SCENARIOS`` are what the project does with it, each returning a comparable
outcome. ``tests/integration/test_celery_modes.py`` runs them in plain Celery's eager mode and
in each unified_jobs mode and compares."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, chain, chord, group

from unified_jobs import Config, Jobs

#: What the tasks did, in this process (every mode compared here runs tasks in this process).
CALLS: list[tuple[str, Any]] = []
_lock = threading.Lock()


def _note(name: str, value: Any) -> None:
    """Note a call: in ``CALLS``, or (worker processes) in the file ``$CANVAS_CALLS``."""
    path = os.environ.get("CANVAS_CALLS")
    with _lock:
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps([name, value]) + "\n")
        else:
            CALLS.append((name, value))


def calls() -> list[tuple[str, Any]]:
    """The calls noted so far (from the file when the tasks run in worker processes)."""
    path = os.environ.get("CANVAS_CALLS")
    if not path:
        return list(CALLS)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as lines:
        return [tuple(json.loads(line)) for line in lines if line.strip()]  # type: ignore[misc]


def clear_calls() -> None:
    CALLS.clear()
    path = os.environ.get("CANVAS_CALLS")
    if path and os.path.exists(path):
        os.unlink(path)


def make_app(
    mode: str, *, broker: str | None = None, backend: str | None = None, queue: dict[str, Any] | None = None
) -> tuple[Celery, Jobs | None]:
    """``mode``: ``eager`` or ``plain`` (Celery alone), else a unified_jobs mode (with ``queue``,
    the config's queue section, for BackgroundQueue)."""
    app = Celery("canvas_project", broker=broker, backend=backend, set_as_current=False)
    app.conf.task_always_eager = mode == "eager"

    @app.task(shared=False, name="canvas.add")
    def add(x: int, y: int) -> int:
        _note("add", x + y)
        return x + y

    @app.task(shared=False, name="canvas.tsum")
    def tsum(values: list[int]) -> int:
        _note("tsum", sum(values))
        return sum(values)

    @app.task(shared=False, name="canvas.boom")
    def boom(message: str) -> None:
        raise ValueError(message)

    @app.task(bind=True, shared=False, name="canvas.progress")
    def progress(self: Any, steps: int) -> int:
        for i in range(steps):
            self.update_state(state="PROGRESS", meta={"done": i, "of": steps})
            time.sleep(0.2)
        return steps

    @app.task(
        bind=True,
        shared=False,
        name="canvas.flaky",
        autoretry_for=(ConnectionError,),
        retry_backoff=1,
        retry_jitter=False,
        max_retries=3,
    )
    def flaky(self: Any, succeed_on: int) -> int:
        _note("flaky", self.request.retries)
        if self.request.retries + 1 < succeed_on:
            raise ConnectionError(f"down on try {self.request.retries + 1}")
        return self.request.retries

    @app.task(shared=False, name="canvas.quiet", ignore_result=True)
    def quiet() -> str:
        _note("quiet", "ran")
        return "not kept"

    @app.task(shared=False, name="canvas.slow", time_limit=1)
    def slow() -> None:
        _note("slow", "started")
        time.sleep(5)

    @app.task(shared=False, name="canvas.die")
    def die() -> None:
        _note("die", "started")
        os._exit(1)

    if mode in ("eager", "plain"):
        return app, None
    config: dict[str, Any] = {"workers": {"mode": mode}}
    if queue is not None:
        config["queue"] = queue
    return app, Jobs(Config.from_dict(config), celery_app=app)


def _get(result: Any) -> Any:
    return result.get(timeout=20)


def _error(call: Callable[[], Any]) -> str:
    try:
        call()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _link(app: Celery) -> Any:
    result = app.tasks["canvas.add"].apply_async((1, 2), link=app.tasks["canvas.add"].s(10))
    return _get(result)


def _chain(app: Celery) -> Any:
    add = app.tasks["canvas.add"]
    result = chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    return [_get(result), _get(result.parent), _get(result.parent.parent)]


def _group(app: Celery) -> Any:
    add = app.tasks["canvas.add"]
    return _get(group(add.s(i, i) for i in range(5)).apply_async())


def _chord(app: Celery) -> Any:
    add, tsum = app.tasks["canvas.add"], app.tasks["canvas.tsum"]
    return _get(chord((add.s(i, i) for i in range(4)), tsum.s()).apply_async())


def _group_then_task(app: Celery) -> Any:
    add, tsum = app.tasks["canvas.add"], app.tasks["canvas.tsum"]
    return _get((group(add.s(1, 1), add.s(2, 2)) | tsum.s()).apply_async())


def _failure(app: Celery) -> Any:
    def call() -> None:
        _get(app.tasks["canvas.boom"].delay("nope"))

    return _error(call)


def _progress(app: Celery) -> Any:
    result = app.tasks["canvas.progress"].delay(2)
    return [_get(result), result.state]


def _autoretry(app: Celery) -> Any:
    return _get(app.tasks["canvas.flaky"].delay(3))


def _ignore_result(app: Celery) -> Any:
    result = app.tasks["canvas.quiet"].delay()
    deadline = time.monotonic() + 10
    while not calls() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # past the run: what was stored is stored
    return result.state


def _countdown(app: Celery) -> Any:
    return _get(app.tasks["canvas.add"].apply_async((5, 5), countdown=1))


def _delay_result(app: Celery) -> Any:
    result = app.tasks["canvas.add"].delay(20, 22)
    return [_get(result), result.state, result.successful()]


def _time_limit(app: Celery) -> Any:
    result = app.tasks["canvas.slow"].delay()
    error = _error(lambda: result.get(timeout=30))
    return [error.partition(":")[0], result.state]


def _worker_lost(app: Celery) -> Any:
    result = app.tasks["canvas.die"].delay()
    error = _error(lambda: result.get(timeout=60))
    return [error.partition(":")[0], result.state]


#: Only where tasks run in worker processes: eager mode enforces no time limit, and a task
#: that ends its process would end the caller's.
WORKER_SCENARIOS: dict[str, Callable[[Celery], Any]] = {
    "time_limit": _time_limit,
    "worker lost": _worker_lost,
}

SCENARIOS: dict[str, Callable[[Celery], Any]] = {
    "delay": _delay_result,
    "link": _link,
    "chain": _chain,
    "group": _group,
    "chord": _chord,
    "group | task": _group_then_task,
    "failure": _failure,
    "update_state": _progress,
    "autoretry_for": _autoretry,
    "ignore_result": _ignore_result,
    "countdown": _countdown,
}
