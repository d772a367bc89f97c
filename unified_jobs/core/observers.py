"""``JobObserver``: the hooks metrics and tracing use (``unified_jobs.observability``), and
``Observed``, the executor's side of them: its ``observers`` and the calls that reach every
one, each observer's error logged and never a job's failure.

Pure, like the rest of the core: the observers that import prometheus-client or OpenTelemetry
live outside it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from unified_jobs.core.job import Job, JobHandle
from unified_jobs.core.outcome import Outcome

__all__ = ["JobObserver", "Observed"]

logger = logging.getLogger(__name__)


class JobObserver:
    """Watches the jobs an app enqueues and the attempts its executor runs (metrics, tracing).

    ``Jobs`` calls ``enqueuing``/``enqueued`` around each ``perform_later`` (and its batch and
    async forms); the executor calls ``starting``/``ended`` around each attempt of a registered
    Worker's job (an adopted Celery app's own tasks are left to Celery's instrumentation, as in
    a queue worker, where they never reach the executor). Adapters call ``inject`` with the
    headers of the message they publish and ``capture`` for a job they hand to another thread,
    so the attempt's ``parent`` can be what was current where the job was enqueued.

    Every method does nothing here. The state one returns is handed back to its pair. An
    observer that raises is logged (``unified_jobs.core.executor``) and never fails a job.
    """

    def enqueuing(self, jobs: Sequence[Job]) -> Any:
        """The app is about to hand ``jobs`` (one worker's, one queue's) to its adapter."""
        return None

    def enqueued(
        self,
        jobs: Sequence[Job],
        handles: Sequence[JobHandle] | None,
        state: Any,
        error: BaseException | None,
    ) -> None:
        """The hand-over ended: ``handles`` (one per job; a unique job refused has its holder's
        id) or ``None`` when nothing was enqueued; ``error`` if it raised (ForegroundBlocking:
        the job's own error, with ``handles``: the job was enqueued and ran)."""

    def inject(self, headers: dict[str, Any]) -> None:
        """Add what should travel with a job published now (a trace context) to ``headers``."""

    def capture(self) -> Any:
        """What should travel with a job handed to another thread now; ``None``: nothing."""
        return None

    def starting(self, job: Job, parent: Any) -> Any:
        """An attempt of ``job`` starts; ``parent``: the message headers a queue worker got, what
        ``capture`` returned at enqueue, or ``None`` (the caller's own context)."""
        return None

    def ended(self, job: Job, outcome: Outcome, state: Any) -> None:
        """The attempt that ``starting`` returned ``state`` for came to ``outcome``."""

    def settled_elsewhere(self, job: Job, outcome: Outcome) -> None:
        """A delivery of ``job`` ended without an attempt the executor ran (its worker process
        died, it was delivered past ``workers.max_deliveries``): only ``outcome`` is known."""


class Observed:
    """What the ``Executor`` does with its observers (a base class of it)."""

    #: Called around every enqueue and attempt (see ``JobObserver``); replaced, never mutated,
    #: so a thread that reads it meanwhile sees the old or the new tuple.
    observers: tuple[JobObserver, ...] = ()

    def add_observer(self, observer: JobObserver) -> None:
        """Call ``observer`` around this app's enqueues and attempts from now on."""
        if observer not in self.observers:
            self.observers = (*self.observers, observer)

    def remove_observer(self, observer: JobObserver) -> None:
        self.observers = tuple(o for o in self.observers if o is not observer)

    def enqueuing(self, jobs: Sequence[Job]) -> list[tuple[JobObserver, Any]]:
        """``JobObserver.enqueuing`` of every observer; pass the result to ``enqueued``."""
        started = []
        for observer in self.observers:
            try:
                started.append((observer, observer.enqueuing(jobs)))
            except Exception:
                logger.exception("observer %r failed at enqueue", observer)
        return started

    def enqueued(
        self,
        jobs: Sequence[Job],
        handles: Sequence[JobHandle] | None,
        started: list[tuple[JobObserver, Any]],
        error: BaseException | None = None,
    ) -> None:
        """``JobObserver.enqueued`` of the observers ``enqueuing`` was called for, last first."""
        for observer, state in reversed(started):
            try:
                observer.enqueued(jobs, handles, state, error)
            except Exception:
                logger.exception("observer %r failed after an enqueue", observer)

    def inject(self, headers: dict[str, Any]) -> None:
        """Let every observer add to the headers of a message published now."""
        for observer in self.observers:
            try:
                observer.inject(headers)
            except Exception:
                logger.exception("observer %r failed to add message headers", observer)

    def capture(self) -> Any:
        """What the first observer that has any wants carried with a job to another thread."""
        for observer in self.observers:
            try:
                captured = observer.capture()
            except Exception:
                logger.exception("observer %r failed to capture a context", observer)
                continue
            if captured is not None:
                return captured
        return None

    def settled_elsewhere(self, job: Job, outcome: Outcome) -> None:
        """Tell the observers of a delivery that ended outside an attempt (see ``JobObserver``)."""
        for observer in self.observers:
            try:
                observer.settled_elsewhere(job, outcome)
            except Exception:
                logger.exception("observer %r failed on a job settled elsewhere", observer)

    def _starting(self, job: Job, parent: Any) -> list[tuple[JobObserver, Any]]:
        started = []
        for observer in self.observers:
            try:
                started.append((observer, observer.starting(job, parent)))
            except Exception:
                logger.exception("observer %r failed as job %s started", observer, job.id)
        return started

    @staticmethod
    def _ended(job: Job, outcome: Outcome, started: list[tuple[JobObserver, Any]]) -> None:
        for observer, state in reversed(started):
            try:
                observer.ended(job, outcome, state)
            except Exception:
                logger.exception("observer %r failed as job %s ended", observer, job.id)
