"""The heartbeat thread of a worker process or an in-process pool: every ``interval`` seconds
it writes what ``make_beat()`` says into the job store (``JobStore.record_heartbeat``) and,
if asked, into a file, until ``stop()``, which removes both (a clean stop is not a death).

The file (``workers.heartbeat_file``) holds the beat as JSON (``core.heartbeat.beat_to_json``)
and is replaced atomically, so a probe never reads half of it; it is written even while the
store is unreachable, so a probe that reads it (``doctor --workers --heartbeat-file``, or one
that checks its modification time) does not depend on the store. ``{pid}`` in its path is
replaced by the process id, for several worker processes on one host.

A failing write never ends the thread: the first failure of a run of them is logged at
WARNING, the recovery at INFO.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from unified_jobs.core.heartbeat import beat_to_json
from unified_jobs.core.monitor import WorkerBeat
from unified_jobs.core.store import JobStore

__all__ = ["Heartbeat", "heartbeat_path"]

logger = logging.getLogger(__name__)

#: Seconds from the first beat to the second, at most (see ``Heartbeat._run``).
FIRST_GAP = 1.0


def heartbeat_path(template: str | None) -> Path | None:
    """The heartbeat file of this process: ``template`` with ``{pid}`` filled in."""
    if not template:
        return None
    return Path(template.replace("{pid}", str(os.getpid()))).expanduser()


class Heartbeat:
    """See the module docstring. ``store=None``: the file only."""

    def __init__(
        self,
        store: JobStore | None,
        make_beat: Callable[[], WorkerBeat],
        interval: float,
        *,
        path: Path | None = None,
        name: str = "unified-jobs-heartbeat",
    ) -> None:
        self.store = store
        self.make_beat = make_beat
        self.interval = interval
        self.path = path
        self.name = name
        #: The last beat made (written or not).
        self.last: WorkerBeat | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failing: dict[str, bool] = {"store": False, "file": False}

    def start(self) -> Heartbeat:
        """Write a beat now, then every ``interval`` seconds, on a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def wake(self) -> None:
        """Write a beat now (something it reports changed); safe from a signal handler."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop beating and remove the beat from the store and the file."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.last is not None and self.store is not None:
            try:
                self.store.forget_worker(self.last.id)
            except Exception as exc:  # it expires on its own
                logger.warning("could not remove the heartbeat of %s from the store: %s", self.last.id, exc)
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _run(self) -> None:
        # The first beat comes before the worker's first poll; the second follows within a
        # second, so that a new worker does not look unpolled for a whole interval.
        wait = min(self.interval, FIRST_GAP)
        while not self._stopping:
            self.beat()
            self._wake.wait(wait)
            self._wake.clear()
            wait = self.interval

    def beat(self) -> WorkerBeat | None:
        """Make and write one beat (what the thread does each interval)."""
        try:
            beat = self.make_beat()
        except Exception:
            logger.exception("could not make a heartbeat")
            return None
        self.last = beat
        if self.path is not None:
            self._write("file", f"heartbeat file {self.path}", lambda: _write_file(self.path, beat))
        if self.store is not None:
            store = self.store
            self._write("store", "the job store", lambda: store.record_heartbeat(beat))
        return beat

    def _write(self, what: str, where: str, write: Callable[[], None]) -> None:
        try:
            write()
        except NotImplementedError as exc:
            logger.warning("no heartbeats in %s: %s", where, exc)
            if what == "store":
                self.store = None  # it will not learn to
            return
        except Exception as exc:
            if not self._failing[what]:
                logger.warning(
                    "could not write the heartbeat to %s (retrying every %g s): %s", where, self.interval, exc
                )
            self._failing[what] = True
            return
        if self._failing[what]:
            logger.info("the heartbeat is written to %s again", where)
            self._failing[what] = False


def _write_file(path: Path | None, beat: WorkerBeat) -> None:
    assert path is not None
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(beat_to_json(beat)), encoding="utf-8")
    os.replace(partial, path)
