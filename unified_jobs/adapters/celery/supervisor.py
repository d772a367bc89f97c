"""``start --worker --pool processes``: worker processes that each take, run and ack their own
jobs, under a supervisor.

Celery's prefork worker passes every job through its main process: the main process takes the
message, hands it to a pool process through a pipe, reads the result back and acks it. On a
small machine that main process costs about as much CPU per job as running the job does. Here
the ``unified-jobs`` process forks ``concurrency`` children instead, each a whole Celery worker
with the ``solo`` pool (its own broker connection, consumer, events and remote control, named
``<name>-<n>@<host>``), which runs each job it takes in its own main thread. The supervisor
runs no job. Each child tells it, through a pipe, when its Celery worker is ready and when it
starts a job (its id, name, queue, delivery tag and, with a ``time_limit``, its deadline: the
limit plus ``HARD_LIMIT_GRACE``) and ends it: two short writes per job. The supervisor

- forwards SIGTERM and SIGINT (a warm stop) and SIGQUIT (a cold stop, which
  ``SupervisedSoloPool`` turns into the running job handed back to its queue) to every child,
  and exits once they all have;
- forks a child again when one dies while the worker is not stopping (after a pause that
  grows while children keep dying at once), so a job that ends its process (``os._exit``, an
  OOM kill) does not end the worker, and puts the job it was running back in its queue now
  (``QueueKind.requeue_lost``), or fails it with ``WorkerLost`` once it died on
  ``workers.max_deliveries`` deliveries, as prefork's main process does;
- enforces hard time limits, which the ``solo`` pool has none of: a job still running at its
  deadline (one stuck in a C call, which the executor's own limit cannot stop) is failed with
  ``TimeLimitExceeded`` (the job store, then ``QueueKind.fail_delivery``) as prefork's main
  process fails it, so that its message is not run again, and then its process is SIGKILLed
  and forked again;
- stops the worker, with the child's exit status, when a child exits before it was ready (a
  bad option, an app that does not import): forking it again would fail the same way.

Each child asks the kernel to SIGKILL it if the supervisor dies (``PR_SET_PDEATHSIG``), so a
``kill -9`` of the supervisor leaves no worker behind: the jobs they held come back as after a
crash of a prefork worker (Redis: after ``visibility_timeout``; SQL: when their lease expires;
RabbitMQ: at once).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import mmap
import os
import selectors
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import signals
from celery.concurrency import solo

from unified_jobs.adapters.celery import draining

if TYPE_CHECKING:
    from collections.abc import Callable

    from unified_jobs.jobs import Jobs

__all__ = [
    "POOL",
    "ColdStop",
    "SupervisedSoloPool",
    "Supervisor",
    "child_hostname",
    "cold_stopping",
    "job_ended",
    "job_started",
    "supervised",
]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: A child that dies this soon after it was forked counts as dying at once: the pause before the
#: next fork doubles (from ``RESTART_PAUSE`` up to ``RESTART_PAUSE_MAX`` seconds).
QUICK_DEATH_SEC = 10.0
RESTART_PAUSE = 0.5
RESTART_PAUSE_MAX = 30.0

#: In a child: the write end of its pipe to the supervisor (None: not supervised).
_notify_fd: int | None = None
#: In a child: a cold stop began (it ends the running job, which goes back to its queue).
_cold_stop = False
#: Celery's ``worker_pool`` of each child.
POOL = f"{__name__}:SupervisedSoloPool"


def supervised() -> bool:
    """Whether this process is a child of a ``--pool processes`` supervisor."""
    return _notify_fd is not None


def cold_stopping() -> bool:
    """Whether a cold stop of this (child) process ended the job it was running."""
    return _cold_stop


class ColdStop(SystemExit):
    """Raised in the job a child's cold stop ends (by ``SupervisedSoloPool.terminate_job``)."""


class SupervisedSoloPool(solo.TaskPool):  # type: ignore[misc]
    """Celery's ``solo`` pool, whose cold stop (SIGQUIT, Ctrl-C twice, the end of
    ``workers.stop_grace``) ends the running job as prefork's does: Celery asks the pool to
    terminate the job, from its signal handler, which runs in this main thread, inside the job.
    The ``ColdStop`` raised here unwinds the job, and the bridge hands it back to its queue
    (``HandedBack``), rather than failing it. (Celery's ``solo`` pool cannot terminate a job.)"""

    def terminate_job(self, pid: int, signum: Any = None) -> None:
        global _cold_stop
        _cold_stop = True
        raise ColdStop("the worker process is stopping cold")


def _tell(message: dict[str, Any]) -> None:
    if _notify_fd is None:
        return
    line = (json.dumps(message, separators=(",", ":")) + "\n").encode()
    with contextlib.suppress(OSError):  # the supervisor is gone: PDEATHSIG ends this process
        os.write(_notify_fd, line)  # under PIPE_BUF: one atomic write


def job_started(job_id: str, name: str, queue: str, delivery_tag: Any, hard_limit: float | None) -> None:
    """In a child: the job has started; with a ``hard_limit``, it must end within that many
    seconds."""
    _tell(
        {
            "op": "start",
            "id": job_id,
            "name": name,
            "queue": queue,
            "tag": None if delivery_tag is None else str(delivery_tag),
            "limit": hard_limit,
            "deadline": None if hard_limit is None else time.monotonic() + float(hard_limit),
        }
    )


def _tell_ready(**_: Any) -> None:
    """In a child (Celery's ``worker_ready``): its Celery worker consumes."""
    _tell({"op": "ready"})


def job_ended(job_id: str) -> None:
    """In a child: the job that ``job_started`` announced has ended."""
    _tell({"op": "end", "id": job_id})


def child_hostname(hostname: str | None, index: int) -> str:
    """Celery's node name for child ``index`` (1-based): ``name-<index>@host`` of ``hostname``
    (Celery's ``--hostname``; default ``celery@%h``)."""
    base = hostname or "celery@%h"
    name, at, host = base.partition("@")
    return f"{name}-{index}@{host}" if at else f"{base}-{index}"


@dataclass
class _Child:
    index: int
    pid: int
    reader: int
    started: float
    buffer: bytes = b""
    #: The job it announced and has not ended (the ``start`` message), if any.
    running: dict[str, Any] | None = None
    #: Its Celery worker said it is ready: until then, an exit is a failure to start.
    ready: bool = False
    #: The job it was killed for (past its hard time limit), once it was.
    killed_for: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def deadline(self) -> float | None:
        """When its running job's hard time limit is up (monotonic), if it has one."""
        if self.running is None or self.killed_for is not None:
            return None
        deadline = self.running.get("deadline")
        return None if deadline is None else float(deadline)


class Supervisor:
    """Forks ``count`` children, each running ``run_child(index)`` (a Celery worker; it must
    not return), and supervises them until they have all exited after a stop."""

    def __init__(self, jobs: Jobs, count: int, run_child: Callable[[int], None]) -> None:
        self.jobs = jobs
        self.count = count
        self.run_child = run_child
        self.children: dict[int, _Child] = {}  # by pid
        self.stopping = False
        self._pause = RESTART_PAUSE
        self._due: dict[int, float] = {}  # child index -> when to fork it again (monotonic)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._pending_signals: list[int] = []
        #: The exit status of the supervisor: a process's that could not start, else 0.
        self.status = 0

    # -- the children --------------------------------------------------------------------

    def _fork(self, index: int) -> None:
        reader, writer = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child
            try:
                self._become_child(writer, reader, parent)
                self.run_child(index)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                os._exit(code)
            except BaseException:
                logger.exception("worker process %d failed", index)
                os._exit(1)
            os._exit(0)
        os.close(writer)
        os.set_blocking(reader, False)
        child = _Child(index=index, pid=pid, reader=reader, started=time.monotonic())
        self.children[pid] = child
        self._selector.register(reader, selectors.EVENT_READ, child)
        logger.info("worker process %d started (pid %d)", index, pid)

    def _become_child(self, writer: int, reader: int, parent: int) -> None:
        global _notify_fd
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.close(reader)
        os.close(self._wake_r)
        os.close(self._wake_w)
        for child in self.children.values():
            os.close(child.reader)
        self._selector.close()
        self.children = {}
        _notify_fd = writer
        signals.worker_ready.connect(_tell_ready, weak=False)
        # Its own stop flag: a warm stop of one child is not its siblings'.
        draining._flag = mmap.mmap(-1, 1)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # not Linux: it outlives a killed supervisor
            pass
        if os.getppid() != parent:  # the supervisor died before the prctl
            os._exit(1)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        """Fork the children and supervise them; the exit status once they have all exited."""
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        for index in range(1, self.count + 1):
            self._fork(index)
        while self.children or (self._due and not self.stopping):
            self._step()
        return self.status

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._pending_signals.append(signum)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def _step(self) -> None:
        now = time.monotonic()
        waits = [max(0.0, when - now) for when in self._due.values()]
        waits += [max(0.0, c.deadline - now) for c in self.children.values() if c.deadline is not None]
        timeout = min([1.0, *waits])
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)
            else:
                self._read(key.data)
        while self._pending_signals:
            self._handle_signal(self._pending_signals.pop(0))
        self._reap()
        self._enforce_limits()
        self._fork_due()

    def _handle_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return
        if signum in (signal.SIGTERM, signal.SIGINT):
            if not self.stopping:
                logger.info("stopping %d worker process(es) warmly", len(self.children))
            forward = signal.SIGTERM
        else:
            forward = signal.SIGQUIT
        self.stopping = True
        self._due.clear()
        for child in list(self.children.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, forward)

    def _read(self, child: _Child) -> None:
        try:
            data = os.read(child.reader, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        child.buffer += data
        *lines, child.buffer = child.buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                logger.warning("worker process %d sent an unreadable line: %r", child.index, line[:200])
                continue
            if message.get("op") == "ready":
                child.ready = True
            elif message.get("op") == "start":
                child.running = message
            elif (
                message.get("op") == "end" and child.running and child.running.get("id") == message.get("id")
            ):
                child.running = None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self._read(child)  # what it wrote before it died
            self._selector.unregister(child.reader)
            os.close(child.reader)
            self._exited(child, status)

    def _exited(self, child: _Child, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        from unified_jobs.observability import multiprocess

        multiprocess.process_exited(child.pid)
        if child.running is not None and child.killed_for is None:  # (a killed one's: failed before the kill)
            logger.error(
                "worker process %d (pid %d) died (exit %s) running job %s (%s); it goes back to its "
                "queue (workers.max_deliveries caps how often)",
                child.index,
                child.pid,
                code,
                child.running.get("id"),
                child.running.get("name"),
            )
            self._settle(child.running, lost=True)
        elif not child.ready and not self.stopping:
            # It never got to consume (a bad option, an app that does not import): forking it
            # again would fail the same way, so the worker stops, with its status, as prefork's.
            logger.error(
                "worker process %d (pid %d) exited (%s) before it was ready: stopping the worker",
                child.index,
                child.pid,
                code,
            )
            self.status = code if code > 0 else 1
            self._handle_signal(signal.SIGTERM)
        elif not self.stopping:
            logger.error("worker process %d (pid %d) exited (%s)", child.index, child.pid, code)
        if self.stopping:
            return
        quick = time.monotonic() - child.started < QUICK_DEATH_SEC and child.killed_for is None
        pause = self._pause if quick else 0.0
        self._pause = min(self._pause * 2, RESTART_PAUSE_MAX) if quick else RESTART_PAUSE
        self._due[child.index] = time.monotonic() + pause

    def _fork_due(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        for index, when in list(self._due.items()):
            if when <= now:
                del self._due[index]
                self._fork(index)

    # -- hard time limits ----------------------------------------------------------------

    def _enforce_limits(self) -> None:
        now = time.monotonic()
        for child in list(self.children.values()):
            running, deadline = child.running, child.deadline
            if running is None or deadline is None or deadline > now:
                continue
            logger.error(
                "job %s (%s) ran past its hard time limit (%gs): killing worker process %d (pid %d)",
                running.get("id"),
                running.get("name"),
                running.get("limit"),
                child.index,
                child.pid,
            )
            child.killed_for = running
            # Failed first: a broker that redelivers the message the moment the process'
            # connection drops (RabbitMQ) hands it to a sibling, which must find it ended.
            self._settle(running, lost=False)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)

    def _settle(self, running: dict[str, Any], *, lost: bool) -> None:
        """Settle the job of a process that is dead (``lost``: it died mid-job; it goes back to
        its queue now) or about to be killed past the job's hard time limit (it fails, as
        prefork's main process fails it, and is not run again)."""
        from unified_jobs.adapters.celery.request import worker_lost_text
        from unified_jobs.core.job import Job
        from unified_jobs.errors import JobError, WorkerLost

        job = Job(id=running["id"], name=running["name"], queue=running.get("queue") or "", kwargs_json="{}")
        bridge = self.jobs.celery_bridge()
        kind = bridge.kind
        tag = running.get("tag")
        if kind is None:
            return
        try:
            error: JobError
            if lost:  # as JobRequest.on_failure caps the deliveries of a dead pool process's job
                deliveries = kind.lost_deliveries(job.id, tag)
                limit = bridge.config.workers.max_deliveries
                if deliveries < limit:
                    kind.requeue_lost(self.jobs.celery, job, tag)
                    return
                error = WorkerLost(worker_lost_text(deliveries, limit))
            else:
                limit_sec = running.get("limit")
                error = JobError(f"TimeLimitExceeded: the worker process was killed after {limit_sec}s")
            bridge.record_failure(job.id, job.name, error, "", queue=job.queue)
            kind.fail_delivery(self.jobs.celery, job, tag, f"{type(error).__name__}: {error}")
        except Exception:
            logger.exception(
                "could not settle job %s in its queue after its worker process %s; it comes back "
                "as after a crash (Redis: after visibility_timeout; SQL: when its lease expires)",
                job.id,
                "died" if lost else "was killed",
            )
