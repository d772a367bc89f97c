"""prometheus-client's multiprocess mode, for a worker whose prefork pool runs the jobs.

Each pool process counts in its own memory-mapped files under ``PROMETHEUS_MULTIPROC_DIR``;
the worker's main process serves the sum of every process' files. ``prepare`` makes that
directory: a private one (``unified-jobs-metrics-<pid>-*`` in the temporary folder), made
before the app is imported and the pool forks, so that every metric made afterwards, the
user's own too, writes there; directories left by workers that died (their pid is gone) are
removed first, and this one is removed when the process exits.

``mark_process_dead`` (for ``live*`` gauges) is called as a pool process exits (the Celery
signal, wired by ``start --worker``) and, for a process that was killed, by the next scrape.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["ENV", "ProcessFiles", "directory", "prepare", "process_exited"]

logger = logging.getLogger(__name__)

#: The variable prometheus-client reads.
ENV = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "unified-jobs-metrics-"
_prepared: dict[int, Path] = {}  # pid -> the directory it made


def directory() -> str | None:
    """The multiprocess directory in force, or ``None`` (single-process mode)."""
    return os.environ.get(ENV) or None


def prepare() -> Path:
    """Switch this process (and the processes it forks) to multiprocess mode in a fresh
    private directory, and return it. Idempotent in one process.

    Call it before metrics are made: prometheus-client picks the value class when it is first
    imported, so it is switched here too if it was imported already (metrics made before keep
    counting in this process' memory only)."""
    pid = os.getpid()
    made = _prepared.get(pid)
    if made is not None:
        return made
    from unified_jobs.observability import require_prometheus

    require_prometheus("--metrics-port")
    _remove_stale(Path(tempfile.gettempdir()))
    path = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{pid}-"))
    previous = os.environ.get(ENV)
    if previous and previous != str(path):
        logger.info("%s was %s; this worker counts in its own %s instead", ENV, previous, path)
    os.environ[ENV] = str(path)
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _fork_safe(values.ValueClass)
    _prepared[pid] = path
    atexit.register(_remove, path, pid)
    return path


def process_exited(pid: int, path: str | None = None) -> None:
    """A process that counted in ``path`` (default: the directory in force) exited: drop its
    ``live*`` gauges."""
    path = path or directory()
    if path is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


class ProcessFiles:
    """prometheus-client's ``MultiProcessCollector`` over ``path``, which first marks dead the
    processes that were killed (their exit ran no signal handler)."""

    def __init__(self, path: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self._path = path
        self._files = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        for name in glob.glob(os.path.join(self._path, "gauge_live*_*.db")):
            match = re.search(r"_(\d+)\.db$", name)
            if match and not _alive(int(match.group(1))):
                process_exited(int(match.group(1)), self._path)
        return self._files.collect()  # type: ignore[no-untyped-call,no-any-return]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _remove_stale(parent: Path) -> None:
    """Remove the directories of workers that died without removing theirs (SIGKILL)."""
    for folder in parent.glob(f"{_PREFIX}*"):
        match = re.match(rf"{_PREFIX}(\d+)-", folder.name)
        try:
            mine = folder.is_dir() and folder.stat().st_uid == os.getuid()
        except OSError:
            continue
        if match and mine and not _alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)


def _remove(path: Path, pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child that happens to run atexit handlers
        shutil.rmtree(path, ignore_errors=True)


def _fork_safe(value_class: Any) -> None:
    """Hold the value class' one lock across ``fork``: a pool process forked while another
    thread of the main process (the scheduler's, enqueueing) increments a metric would
    otherwise inherit the lock held, and hang at its first job."""
    locks = [
        cell.cell_contents
        for cell in getattr(value_class.inc, "__closure__", None) or ()
        if isinstance(cell.cell_contents, type(threading.Lock()))
    ]
    if len(locks) != 1 or not hasattr(os, "register_at_fork"):
        logger.debug("prometheus-client's value lock not found; fork is not guarded")
        return
    lock = locks[0]
    os.register_at_fork(before=lock.acquire, after_in_parent=lock.release, after_in_child=_release(lock))


def _release(lock: Any) -> Any:
    def release() -> None:
        with contextlib.suppress(RuntimeError):
            lock.release()

    return release
