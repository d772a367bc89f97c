"""A warm shutdown hands back the jobs a worker had taken and not started.

Celery hands a pool every job it prefetches as soon as it has it. On a warm shutdown (SIGTERM,
SIGINT) it stops consuming and waits for the pool, and the pool runs what it was handed: with
the event-loop pool (Redis, RabbitMQ) one job waiting per process, with the threaded prefork
pool of the SQL kinds (whose transport has no event loop) every prefetched job, so a stop took
16 s with 20 jobs of 1 s waiting.

So what a worker's pool runs is wrapped (``DrainStep``, a consumer bootstep that wraps the pool's
``apply_async`` before the consumer's task strategies bind it): once the worker's main
process begins a warm shutdown it raises a flag, and a job that reaches a pool process after
that is not run: it is rejected with ``requeue=True``, which puts it back in its queue at once
(the SQL row back to ``queued``, the Redis message back on its list, the AMQP message
nacked). The flag is one byte of anonymous shared memory, made at import (before the pool
forks), so the pool's processes read what the main process writes, from its signal handler.
A job already running is not touched: it finishes, as a warm shutdown promises, unless
``workers.stop_grace`` is set: that long after the warm stop began, the worker stops cold.
A cold stop (that, Ctrl-C twice, SIGQUIT) ends the pool processes, and billiard raises
``SystemExit`` in the job it ends: the bridge tells it from a job's own and hands the job back
to its queue too (``HandedBack``), rather than failing it.

A SIGTERM to the worker's whole process group (``timeout``, ``kill -TERM -PGID``, a process
manager that signals the group) reaches the pool's processes too, and Celery's pool processes
die of it mid-job (the job then runs again). ``start --worker`` avoids this on Linux
(``isolate_pool_processes``): each pool process moves to a process group of its own, so only the
main process hears the group's signal and stops warmly, and asks the kernel to SIGKILL it if
the main process dies (``PR_SET_PDEATHSIG``), so that a SIGKILL of the group still leaves no
process behind. A process manager that signals every process of a cgroup (systemd's default
``KillMode=control-group``) still reaches them: use ``KillMode=mixed`` (guarantees.md,
"Stopping a worker"). Linux sends the death signal when the *thread* that forked the process
ends: the threaded pool's supervisor thread forks replacements and ends when the pool does,
by which time its processes are idle and about to exit anyway.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import signal
import sys
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from celery import Celery, bootsteps, signals
from celery.exceptions import Reject

__all__ = [
    "DrainStep",
    "HandedBack",
    "begin",
    "draining",
    "install",
    "isolate_pool_processes",
    "reset",
    "uninstall",
]

logger = logging.getLogger(__name__)

#: prctl(2): send this process a signal when its parent dies.
_PR_SET_PDEATHSIG = 1

#: One byte: 1 while the worker of this process tree is in a warm shutdown.
_flag = mmap.mmap(-1, 1)


class HandedBack(Reject):  # type: ignore[misc]
    """A job a worker gives back to its queue, unrun or not run to its end, to run again: it
    reached a pool process after the warm shutdown began, a cold stop ended it, or its job
    store did not answer when it was to start."""

    def __init__(self, why: str = "the worker is stopping: not started") -> None:
        super().__init__(f"handed back to its queue ({why})", requeue=True)
        self.why = why

    def __reduce__(self) -> tuple[Any, ...]:
        return (HandedBack, (self.why,))


def draining() -> bool:
    """Whether the worker (of this process, or of the main process that forked it) stops."""
    return _flag[0] == 1


#: ``workers.stop_grace`` of the worker of this process (``start --worker`` sets it).
stop_grace: float | None = None


def begin(how: str = "Warm", **_: Any) -> None:
    """The warm shutdown began (Celery's ``worker_shutting_down``, sent from its signal
    handler: one byte written, and with a ``stop_grace`` a timer thread started)."""
    _flag[0] = 1
    if how == "Warm" and stop_grace is not None:
        timer = threading.Timer(stop_grace, _stop_cold, (stop_grace,))
        timer.daemon = True
        timer.start()


def _stop_cold(grace: float) -> None:
    """The grace is over: Celery's cold stop (SIGQUIT) ends the pool processes, and the jobs
    they were running go back to their queue (``HandedBack``)."""
    logger.warning(
        "workers.stop_grace (%g s) is over: stopping cold; running jobs go back to their queue", grace
    )
    os.kill(os.getpid(), signal.SIGQUIT)


def reset(**_: Any) -> None:
    """A worker starts in this process: an earlier worker's stop does not carry over."""
    _flag[0] = 0


def run_unless_draining(target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """In the pool process: run the job's trace, unless the shutdown began before it got here.

    A job past its hard time limit gets billiard's SIGTERM, and a SIGKILL 0.1 s later. Where
    the SIGTERM ends the job early and the worker is not stopping, the process leaves at once
    (its result is the parent's timeout already): back in billiard's loop it would take the
    lock of the pool's shared inqueue (the SQL kinds' threaded pool) and die holding it to the
    SIGKILL, and no pool process would ever get a job again."""
    if draining():
        raise HandedBack()
    result = target(*args, **kwargs)
    if not draining() and pool_process_ending():
        raise SystemExit("pool process ended by a SIGTERM (a hard time limit)")
    return result


def pool_process_ending() -> bool:
    """Whether billiard's termination handler ran in this (pool) process: a SIGTERM from the
    pool ending it, which it turns into a ``SystemExit`` where the job is."""
    from billiard import common

    return bool(common._should_have_exited[0])


def install(app: Celery) -> None:
    """Make every worker of ``app`` hand back what it has not started when it stops."""
    app.steps["consumer"].add(DrainStep)


def uninstall(app: Celery) -> None:
    """Undo ``install`` (an adopted app given back)."""
    app.steps["consumer"].discard(DrainStep)


class DrainStep(bootsteps.Step):  # type: ignore[misc]
    """Wraps the worker's pool (made before the consumer) so that each job it runs goes
    through ``run_unless_draining``, for every task: Workers and plain Celery tasks alike."""

    label = "unified_jobs drain on stop"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        pool = getattr(c, "pool", None)
        if pool is None or getattr(pool, "_unified_jobs_draining", False):
            return
        apply_async = pool.apply_async

        def apply_unless_draining(target: Callable[..., Any], *args: Any, **options: Any) -> Any:
            return apply_async(partial(run_unless_draining, target), *args, **options)

        pool.apply_async = apply_unless_draining
        pool._unified_jobs_draining = True


def isolate_pool_processes() -> bool:
    """Make each pool process of the workers started from now on leave the main process' group
    (see the module docstring); False where that is not possible (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    signals.worker_process_init.connect(_own_group, weak=False)
    return True


def _own_group(**_: Any) -> None:
    """In a new pool process: die with the main process, then leave its process group."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError) as exc:
        logger.warning("pool process %d stays in the worker's process group: %s", os.getpid(), exc)
        return
    if os.getppid() != parent:  # the main process died before the prctl
        os._exit(1)
    os.setpgid(0, 0)


signals.worker_shutting_down.connect(begin, weak=False)
signals.worker_init.connect(reset, weak=False)
