"""Prometheus metrics of an app's jobs.

Counters, by ``worker`` (the worker's name) and ``queue``: ``unified_jobs_jobs_enqueued_total``
(in the process that enqueues: a web process too, once metrics are enabled there),
``..._started_total``, ``..._succeeded_total``, ``..._failed_total`` (rejected jobs and jobs
whose worker process died past ``workers.max_deliveries`` included), ``..._retried_total``
(attempts that failed and are tried again) and ``..._cancelled_total``; the histogram
``unified_jobs_job_duration_seconds`` of attempts by worker, queue and ``outcome``
(succeeded, failed, retried, rejected, cancelled). Gauges read from the job store at each
scrape (``QueueCollector``): ``unified_jobs_queue_depth{queue,state}`` (queued, scheduled,
processing, failed), ``unified_jobs_queue_oldest_job_age_seconds{queue}``,
``unified_jobs_store_up`` and ``unified_jobs_queue_stats_supported``.

Metrics are off until ``enable(jobs)``: ``start --worker --metrics-port``, the dashboard's
``/metrics`` (``render_metrics``, ``metrics_app``) and a call in the user's own processes turn
them on. An attempt costs a few microseconds more then (two counter increments and a
histogram observation on label children looked up once per worker and queue).

In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set, as ``start --worker --metrics-port``
does for its prefork pool; see ``multiprocess``) the values live in that directory's files and
are not registered anywhere; ``render_metrics`` sums every process' files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from unified_jobs.core.executor import JobObserver
from unified_jobs.core.job import Job, JobHandle, utcnow
from unified_jobs.core.outcome import Outcome, OutcomeKind
from unified_jobs.errors import UnifiedJobsError
from unified_jobs.observability import multiprocess

if TYPE_CHECKING:
    from unified_jobs.jobs import Jobs

__all__ = [
    "DURATION_BUCKETS",
    "MetricsObserver",
    "QueueCollector",
    "enable",
    "metrics_app",
    "render_metrics",
    "serve",
]

logger = logging.getLogger(__name__)

#: Seconds: from a no-op job to an hour-long one.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
#: The ``outcome`` label of the duration histogram, by ``Outcome.kind``.
OUTCOME_LABEL: dict[OutcomeKind, str] = {
    "succeeded": "succeeded",
    "failed": "failed",
    "retry": "retried",
    "rejected": "rejected",
    "cancelled": "cancelled",
}
#: The states of ``unified_jobs_queue_depth``, as ``QueueStats`` counts them.
DEPTH_STATES = ("queued", "scheduled", "processing", "failed")


class _Families:
    """The counters and the histogram: one set per registry (or one, unregistered, for
    multiprocess mode), shared by every app enabled on it."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        labels = ("worker", "queue")

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"unified_jobs_jobs_{name}", doc, labels, registry=registry)

        self.enqueued = counter("enqueued", "Jobs enqueued (perform_later and its batch and async forms).")
        self.started = counter("started", "Attempts started.")
        self.succeeded = counter("succeeded", "Attempts that succeeded.")
        self.failed = counter("failed", "Jobs failed (attempts exhausted, discard_on, rejected, lost).")
        self.retried = counter("retried", "Attempts that failed and are retried.")
        self.cancelled = counter("cancelled", "Attempts stopped by jobs.cancel.")
        self.duration = Histogram(
            "unified_jobs_job_duration_seconds",
            "How long attempts ran, by outcome.",
            (*labels, "outcome"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )


_lock = threading.Lock()
_families_of: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_unregistered: list[_Families] = []  # multiprocess mode's one set


def _families(registry: CollectorRegistry | None) -> _Families:
    # Under _lock.
    if registry is None:
        if not _unregistered:
            _unregistered.append(_Families(None))
        return _unregistered[0]
    families = _families_of.get(registry)
    if families is None:
        families = _families_of[registry] = _Families(registry)
    return families


def enable(jobs: Jobs, registry: CollectorRegistry | None = None) -> MetricsObserver:
    """Count ``jobs``' enqueues and attempts from now on, and read its queues at each scrape.

    The metrics are registered in ``registry`` (default: prometheus-client's ``REGISTRY``),
    except in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set), where they are written to
    that directory's files. Enabling an app again returns its observer as it is.
    """
    with _lock:
        for observer in jobs.executor.observers:
            if isinstance(observer, MetricsObserver):
                return observer
        collector = QueueCollector(jobs)
        if multiprocess.directory() is not None:
            observer = MetricsObserver(_families(None), collector, None)
        else:
            registry = REGISTRY if registry is None else registry
            observer = MetricsObserver(_families(registry), collector, registry)
            registry.register(collector)
        jobs.executor.add_observer(observer)
        return observer


class _Series:
    """The label children of one worker on one queue, looked up once."""

    __slots__ = (
        "_duration",
        "cancelled",
        "durations",
        "enqueued",
        "failed",
        "retried",
        "started",
        "succeeded",
    )

    def __init__(self, families: _Families, worker: str, queue: str) -> None:
        self.enqueued = families.enqueued.labels(worker, queue)
        self.started = families.started.labels(worker, queue)
        self.succeeded = families.succeeded.labels(worker, queue)
        self.failed = families.failed.labels(worker, queue)
        self.retried = families.retried.labels(worker, queue)
        self.cancelled = families.cancelled.labels(worker, queue)
        self._duration = families.duration
        self.durations: dict[str, Any] = {
            label: families.duration.labels(worker, queue, label) for label in ("succeeded", "failed")
        }

    def duration(self, outcome: str, worker: str, queue: str) -> Any:
        child = self.durations.get(outcome)
        if child is None:
            child = self.durations.setdefault(outcome, self._duration.labels(worker, queue, outcome))
        return child


class MetricsObserver(JobObserver):
    """The executor observer that counts (see the module docstring)."""

    def __init__(
        self, families: _Families, collector: QueueCollector, registry: CollectorRegistry | None
    ) -> None:
        self._families = families
        self.collector = collector
        #: Where the metrics are registered (``None``: multiprocess mode).
        self.registry = registry
        self._series: dict[tuple[str, str], _Series] = {}
        self._scrape_registry: CollectorRegistry | None = None

    def _of(self, job: Job) -> _Series:
        key = (job.name, job.queue)
        series = self._series.get(key)
        if series is None:  # two threads may both make one: labels() gives them the same children
            series = self._series.setdefault(key, _Series(self._families, *key))
        return series

    def enqueued(
        self,
        jobs: Sequence[Job],
        handles: Sequence[JobHandle] | None,
        state: Any,
        error: BaseException | None,
    ) -> None:
        if handles is None or not jobs:
            return
        # A unique job refused has the handle of the job holding its key: not enqueued.
        taken = sum(1 for job, handle in zip(jobs, handles, strict=True) if handle.id == job.id)
        if taken:
            self._of(jobs[0]).enqueued.inc(taken)  # a batch is one worker's, on one queue

    def starting(self, job: Job, parent: Any) -> tuple[_Series, float]:
        series = self._of(job)
        series.started.inc()
        return series, time.perf_counter()

    def ended(self, job: Job, outcome: Outcome, state: tuple[_Series, float]) -> None:
        series, started = state
        elapsed = time.perf_counter() - started
        kind = outcome.kind
        if kind == "succeeded":
            series.succeeded.inc()
        elif kind == "retry":
            series.retried.inc()
        elif kind == "cancelled":
            series.cancelled.inc()
        else:  # failed, rejected
            series.failed.inc()
        series.duration(OUTCOME_LABEL[kind], job.name, job.queue).observe(elapsed)

    def settled_elsewhere(self, job: Job, outcome: Outcome) -> None:
        if outcome.kind in ("failed", "rejected"):
            self._of(job).failed.inc()

    def scrape_registry(self) -> CollectorRegistry:
        """What a scrape of this app reads: the registry the metrics are in, or in multiprocess
        mode one that sums every process' files and adds this app's queue gauges."""
        if self.registry is not None:
            return self.registry
        if self._scrape_registry is None:
            path = multiprocess.directory()
            if path is None:
                raise UnifiedJobsError(
                    "PROMETHEUS_MULTIPROC_DIR was unset after metrics were enabled in multiprocess mode"
                )
            registry = CollectorRegistry(auto_describe=False)
            registry.register(multiprocess.ProcessFiles(path))
            registry.register(self.collector)
            self._scrape_registry = registry
        return self._scrape_registry


class QueueCollector:
    """The queue gauges, read from the app's job store (``JobStore.queue_stats``) at each scrape.

    A store that cannot answer (not implemented: ``unified_jobs_queue_stats_supported 0``) or
    is down (``unified_jobs_store_up 0``, logged once as it goes down) never fails the scrape:
    the counters are still served.
    """

    def __init__(self, jobs: Jobs) -> None:
        self._jobs = weakref.ref(jobs)  # a registry's collector must not keep a closed app alive
        self._was_up = True
        self._said_unsupported = False

    def describe(self) -> list[Metric]:
        return []  # so that registering it does not read the store

    def collect(self) -> Iterable[Metric]:
        jobs = self._jobs()
        if jobs is None:
            return []
        supported = GaugeMetricFamily(
            "unified_jobs_queue_stats_supported", "1 if the job store answers queue statistics."
        )
        up = GaugeMetricFamily(
            "unified_jobs_store_up", "1 if the job store answered the last scrape's queue statistics."
        )
        store = jobs.adapter.store
        try:
            stats = store.queue_stats()
        except NotImplementedError as exc:
            if not self._said_unsupported:
                self._said_unsupported = True
                logger.info("no queue gauges: %s", exc)
            supported.add_metric([], 0)
            return [supported]
        except Exception as exc:
            if self._was_up:
                logger.warning(
                    "could not read queue statistics from the job store (%s): %s; "
                    "unified_jobs_store_up is 0 until it answers",
                    type(store).__name__,
                    exc,
                )
            self._was_up = False
            supported.add_metric([], 1)
            up.add_metric([], 0)
            return [supported, up]
        if not self._was_up:
            logger.warning("the job store (%s) answers queue statistics again", type(store).__name__)
        self._was_up = True
        supported.add_metric([], 1)
        up.add_metric([], 1)
        depth = GaugeMetricFamily(
            "unified_jobs_queue_depth", "Jobs in each queue, by state.", labels=("queue", "state")
        )
        age = GaugeMetricFamily(
            "unified_jobs_queue_oldest_job_age_seconds",
            "How long the oldest job due now has waited (0: none waits).",
            labels=("queue",),
        )
        now = utcnow()
        for queue in stats:
            for state in DEPTH_STATES:
                depth.add_metric((queue.name, state), getattr(queue, state))
            oldest = queue.oldest_queued_at
            waited = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
            age.add_metric((queue.name,), waited)
        return [supported, up, depth, age]


# -- serving -----------------------------------------------------------------------------------


def render_metrics(jobs: Jobs, accept: str | None = None) -> tuple[bytes, str]:
    """The body of a ``/metrics`` answer for ``jobs`` and its content type (the Prometheus text
    format, or OpenMetrics when ``accept``, a request's Accept header, asks for it). Enables the
    app's metrics if they were not. Reads the job store: call it off the event loop."""
    registry = enable(jobs).scrape_registry()
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
#: An ASGI application.
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


def metrics_app(jobs: Jobs) -> ASGIApp:
    """An ASGI app answering ``GET`` (and ``HEAD``) with ``render_metrics(jobs)``, whatever the
    path: mount it at ``/metrics``. Enables the app's metrics now, so that this process'
    enqueues are counted from the start."""
    enable(jobs)

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets: nothing to do
        if scope["method"] not in ("GET", "HEAD"):
            allow = [(b"allow", b"GET, HEAD")]
            await _respond(send, 405, b"method not allowed\n", "text/plain; charset=utf-8", allow)
            return
        accept = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"accept"), None)
        body, content_type = await asyncio.to_thread(render_metrics, jobs, accept)
        await _respond(send, 200, b"" if scope["method"] == "HEAD" else body, content_type)

    return app


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type.encode("latin-1")), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(jobs: Jobs, port: int, binding: str = "127.0.0.1") -> tuple[str, int]:
    """Serve ``jobs``' metrics over HTTP from a daemon thread of this process (what
    ``start --worker --metrics-port`` does); returns the address and port bound (``port`` 0:
    one the system picks). ``UnifiedJobsError`` if the address cannot be bound."""
    from prometheus_client import start_http_server

    observer = enable(jobs)
    if observer.registry is not None and multiprocess.directory() is not None:
        logger.warning(
            "this app's metrics were enabled before %s was set: they count in this process only, "
            "not in the processes it forks; enable them after it (start --worker does)",
            multiprocess.ENV,
        )
    registry = observer.scrape_registry()
    try:
        server, _thread = start_http_server(port, binding, registry=registry)
    except OSError as exc:
        raise UnifiedJobsError(
            f"cannot serve metrics on {binding}:{port}: {exc}; pick another --metrics-port "
            "(or --metrics-binding)"
        ) from None
    host, bound = server.server_address[:2]
    logger.info("serving metrics on http://%s:%d/metrics (pid %d)", host, bound, os.getpid())
    return str(host), int(bound)
