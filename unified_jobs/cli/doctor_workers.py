"""``unified-jobs doctor --workers``: the worker processes' heartbeats, as a probe.

Reads the beats from the queue's job store (or one beat from a heartbeat file), prints one
row per worker, and judges each with ``core.heartbeat.judge``: a live worker that has a free
slot and had not asked its queues for jobs for more than ``--stale-after`` seconds is
stalled. The exit status is what an orchestrator's probe looks at (``EXIT_*``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

import click

from unified_jobs.cli.doctor import DoctorReport
from unified_jobs.config import Config
from unified_jobs.core.heartbeat import DEFAULT_STALE_AFTER, Liveness, beat_from_json, judge
from unified_jobs.core.job import utcnow
from unified_jobs.core.monitor import WorkerBeat

__all__ = ["EXIT_CANNOT_TELL", "EXIT_OK", "EXIT_UNHEALTHY", "probe_file", "probe_store"]

#: At least one live worker is seen (of those probed), and none of them is stalled.
EXIT_OK = 0
#: No live worker is seen (of those probed), or one is stalled.
EXIT_UNHEALTHY = 1
#: The heartbeats could not be read: the app or config did not load, the store did not
#: answer, or the mode keeps no heartbeats another process can read.
EXIT_CANNOT_TELL = 3

T = TypeVar("T")


def probe_store(
    report: DoctorReport,
    config: Config,
    *,
    stale_after: float | None,
    worker_ids: Sequence[str],
    this_host: bool,
    timeout: float,
) -> NoReturn:
    """Probe the workers whose beats are in the job store of ``config``'s queue."""
    mode = config.workers.mode
    if mode != "BackgroundQueue" or config.queue is None:
        where = (
            "the BackgroundAsync pool keeps its heartbeat in the memory of its own process (its "
            "dashboard shows it)"
            if mode == "BackgroundAsync"
            else "ForegroundBlocking runs jobs in the caller: there are no worker processes"
        )
        _cannot_tell(report, f"workers.mode is {mode}: {where}; nothing here for doctor to read")
    from unified_jobs.adapters.celery.kinds import kind_for

    store = kind_for(config.queue, config.workers).store
    try:
        beats = _within(timeout, store.workers)
    except NotImplementedError as exc:
        _cannot_tell(report, f"the {config.queue.kind} job store keeps no heartbeats: {exc}")
    except TimeoutError:
        _cannot_tell(report, f"the {config.queue.kind} job store did not answer within {timeout:g} s")
    except Exception as exc:
        _cannot_tell(report, f"could not read the heartbeats from the {config.queue.kind} job store: {exc}")
    finally:
        _close_quietly(store.close)
    limit = stale_after if stale_after is not None else config.workers.stale_after
    _judge_all(report, beats, limit, worker_ids=worker_ids, this_host=this_host, source="the job store")


def probe_file(
    report: DoctorReport,
    path: Path,
    *,
    stale_after: float | None,
    worker_ids: Sequence[str],
    this_host: bool,
) -> NoReturn:
    """Probe the one worker whose beat is in the heartbeat file ``path``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.fail(
            "workers",
            f"no heartbeat file {path}: no worker process writes it (is workers.heartbeat_file set "
            "to this path, and the worker running?)",
        )
        _finish(report, EXIT_UNHEALTHY)
    except (OSError, ValueError) as exc:
        _cannot_tell(report, f"cannot read the heartbeat file {path}: {exc}")
    try:
        beat = beat_from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        _cannot_tell(report, f"{path} is not a heartbeat file: {exc!r}")
    # The worker's own workers.stale_after, as it wrote it, unless the probe says otherwise.
    limit = stale_after if stale_after is not None else _float(beat.extra.get("stale_after"))
    _judge_all(report, [beat], limit, worker_ids=worker_ids, this_host=this_host, source=str(path))


def _judge_all(
    report: DoctorReport,
    beats: list[WorkerBeat],
    stale_after: float,
    *,
    worker_ids: Sequence[str],
    this_host: bool,
    source: str,
) -> NoReturn:
    seen = len(beats)
    host = socket.gethostname()
    if this_host:
        beats = [b for b in beats if b.host == host]
    if worker_ids:
        beats = [b for b in beats if any(_matches(b, wanted) for wanted in worker_ids)]
    now = utcnow()
    judged = [(beat, judge(beat, stale_after, now)) for beat in beats]
    alive = [(b, v) for b, v in judged if v.verdict != "gone"]
    gone = len(judged) - len(alive)
    summary = f"{len(alive)} alive" + (f", {gone} gone" if gone else "") + f" (stale after {stale_after:g} s)"
    selection = _selection(worker_ids, this_host, host)
    if judged:
        report.info("workers", f"{summary}{selection}, from {source}")
        _table(judged)
    if not alive:
        what = f"no worker{selection}" if seen else "no worker at all"
        hint = " (each worker process writes one every workers.heartbeat_interval s)" if not seen else ""
        others = f"; {seen} other(s) seen" if seen and not judged else ""
        report.fail("workers", f"{what} has a live heartbeat in {source}{hint}{others}")
        _finish(report, EXIT_UNHEALTHY)
    for beat, liveness in alive:
        if liveness.failing:
            report.fail("workers", f"{beat.id} on {beat.host} is stalled: {liveness.reason}")
    if report.problems:
        _finish(report, EXIT_UNHEALTHY)
    report.ok("workers", f"{len(alive)} live worker(s){selection}, none stalled")
    _finish(report, EXIT_OK)


def _matches(beat: WorkerBeat, wanted: str) -> bool:
    """``--worker``: the beat's id, its Celery node name, or its pid."""
    return wanted in (beat.id, beat.extra.get("node"), str(beat.pid))


def _selection(worker_ids: Sequence[str], this_host: bool, host: str) -> str:
    parts = []
    if worker_ids:
        parts.append(f"--worker {', '.join(worker_ids)}")
    if this_host:
        parts.append(f"on this host ({host})")
    return f" [{'; '.join(parts)}]" if parts else ""


def _table(judged: list[tuple[WorkerBeat, Liveness]]) -> None:
    rows = [("ID", "HOST", "PID", "QUEUES", "BUSY", "BEAT", "POLLED", "STATE")]
    running: list[str] = []
    for beat, liveness in judged:
        state = liveness.verdict.upper() if liveness.failing else liveness.verdict
        rows.append(
            (
                beat.id,
                beat.host,
                str(beat.pid),
                ",".join(beat.queues) or "(none)",
                f"{len(beat.current)}/{beat.concurrency}",
                f"{_age(liveness.beat_age)} ago",
                f"{_age(liveness.poll_age)} ago" if liveness.poll_age is not None else "never",
                state,
            )
        )
        if beat.current:
            more = f" (+{len(beat.current) - 5})" if len(beat.current) > 5 else ""
            running.append(f"{beat.id} runs {', '.join(beat.current[:5])}{more}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(" " * 16 + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for line in running:
        click.echo(" " * 16 + line)


def _age(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def _float(value: str | None) -> float:
    try:
        return float(value) if value else DEFAULT_STALE_AFTER
    except ValueError:
        return DEFAULT_STALE_AFTER


def _within(timeout: float, read: Callable[[], T]) -> T:
    """``read()``, or ``TimeoutError`` after ``timeout`` s (a store that hangs must not hang
    the probe; the reading thread is a daemon, left to end on its own)."""
    done = threading.Event()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(read())
        except BaseException as exc:
            error.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="unified-jobs-doctor-read", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError()
    if error:
        raise error[0]
    return result[0]


def _close_quietly(close: Callable[[], None]) -> None:
    with contextlib.suppress(Exception):  # the probe's answer is what matters
        close()


def _cannot_tell(report: DoctorReport, message: str) -> NoReturn:
    report.fail("workers", message)
    _finish(report, EXIT_CANNOT_TELL)


def _finish(report: DoctorReport, code: int) -> NoReturn:
    if code == EXIT_OK:
        click.echo("\ndoctor --workers: every worker probed is alive and consuming")
    else:
        click.echo(f"\ndoctor --workers: exit status {code}; see the FAIL lines above")
    raise click.exceptions.Exit(code)
