"""Prometheus metrics and OpenTelemetry traces of an app's jobs: the implementations of the
core's ``JobObserver`` hooks (``unified_jobs.core.executor``).

Both are optional. Tracing is on when ``opentelemetry-api`` is installed (the ``otel`` extra;
spans go to the global ``TracerProvider``; without one they are the API's no-ops), and a
no-op without it. Metrics need ``prometheus-client`` (the ``metrics`` extra) and are on once
enabled: ``unified-jobs start --worker --metrics-port N``, the dashboard's ``/metrics``, or
``enable_metrics(jobs)`` in a process of your own (a web process, to count its enqueues).

Nothing here is imported until used: importing this package imports neither library.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from unified_jobs.errors import MissingDependencyError

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from unified_jobs.jobs import Jobs
    from unified_jobs.observability.metrics import ASGIApp, MetricsObserver
    from unified_jobs.observability.tracing import TracingObserver

__all__ = [
    "disable_tracing",
    "enable_metrics",
    "enable_tracing",
    "install",
    "metrics_app",
    "render_metrics",
    "require_prometheus",
    "serve_metrics",
]

logger = logging.getLogger(__name__)


def require_prometheus(what: str = "metrics") -> None:
    """``MissingDependencyError`` naming the extra, unless prometheus-client is installed."""
    try:
        importlib.import_module("prometheus_client")
    except ImportError:
        raise MissingDependencyError(
            f"{what} needs prometheus-client: pip install 'unified-jobs[metrics]'"
        ) from None


def enable_metrics(jobs: Jobs, registry: CollectorRegistry | None = None) -> MetricsObserver:
    """Count ``jobs``' enqueues and attempts in this process from now on (see
    ``unified_jobs.observability.metrics``); returns its observer."""
    require_prometheus()
    from unified_jobs.observability import metrics

    return metrics.enable(jobs, registry)


def render_metrics(jobs: Jobs, accept: str | None = None) -> tuple[bytes, str]:
    """``(body, content type)`` of a ``/metrics`` answer for ``jobs`` (enabling its metrics)."""
    require_prometheus()
    from unified_jobs.observability import metrics

    return metrics.render_metrics(jobs, accept)


def metrics_app(jobs: Jobs) -> ASGIApp:
    """An ASGI app serving ``render_metrics(jobs)``, to mount at ``/metrics``."""
    require_prometheus()
    from unified_jobs.observability import metrics

    return metrics.metrics_app(jobs)


def serve_metrics(jobs: Jobs, port: int, binding: str = "127.0.0.1") -> tuple[str, int]:
    """Serve ``jobs``' metrics at ``http://binding:port/metrics`` from a thread of this process."""
    require_prometheus("--metrics-port")
    from unified_jobs.observability import metrics

    return metrics.serve(jobs, port, binding)


def enable_tracing(jobs: Jobs, tracer_provider: TracerProvider | None = None) -> TracingObserver:
    """Trace ``jobs``' enqueues and attempts to ``tracer_provider`` (default: the global one),
    replacing the tracing ``Jobs`` set up itself. Needs opentelemetry-api."""
    try:
        from unified_jobs.observability import tracing
    except ImportError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        raise MissingDependencyError(
            "tracing needs opentelemetry-api: pip install 'unified-jobs[otel]'"
        ) from None
    return tracing.enable(jobs, tracer_provider)


def disable_tracing(jobs: Jobs) -> None:
    """Make no more spans for ``jobs``' enqueues and attempts."""
    try:
        from unified_jobs.observability.tracing import TracingObserver
    except ImportError:
        return  # no opentelemetry: nothing traces
    for observer in jobs.executor.observers:
        if isinstance(observer, TracingObserver):
            jobs.executor.remove_observer(observer)


def install(jobs: Jobs) -> None:
    """What ``Jobs`` sets up for itself: tracing, when opentelemetry-api is installed."""
    try:
        from unified_jobs.observability import tracing
    except ImportError as exc:
        if (exc.name or "").startswith("opentelemetry"):
            return  # the otel extra is not installed: no spans, no cost
        raise
    tracing.enable(jobs)
