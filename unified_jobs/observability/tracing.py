"""OpenTelemetry spans for enqueue and perform, with the trace context carried by the job.

- ``unified_jobs.enqueue <worker>`` (kind PRODUCER) around ``perform_later``,
  ``perform_all_later`` and ``aperform_later`` (one span for a batch);
- ``unified_jobs.perform <worker>`` (kind CONSUMER) around each attempt the executor runs, a
  child of the enqueue span: the W3C trace context (``traceparent``, ``tracestate``; whatever
  the global propagator writes) goes into the Celery message's headers at publish and is read
  back in the worker (retries keep the headers, so every attempt has the same parent); the
  in-process pool carries the OpenTelemetry context itself with the job to its thread;
  ForegroundBlocking runs the job inside the enqueue span.

Attributes follow the OpenTelemetry messaging conventions where that is cheap
(``messaging.system``, ``messaging.operation.type``/``name``, ``messaging.destination.name``,
``messaging.message.id``, ``messaging.batch.message_count``), plus ``unified_jobs.job.*``
(id, worker, attempt, outcome). A failed attempt records its exception and sets the span's
status to ERROR (a retried one too: that attempt failed); a cancelled one does not.

Spans go to whatever ``TracerProvider`` is set globally, or to the one given to
``enable_tracing``. While no global provider is set (the API alone, or an SDK configured only
later, e.g. in Celery's ``worker_process_init``), each hook returns after one test. An adopted Celery
app's own tasks are left to Celery's own instrumentation (``opentelemetry-instrumentation-
celery``); when that instrumentation has made a span for the running task, the perform span is
its child.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from unified_jobs.core.executor import JobObserver
from unified_jobs.core.job import Job, JobHandle
from unified_jobs.core.outcome import Outcome

if TYPE_CHECKING:
    from unified_jobs.jobs import Jobs

__all__ = ["TracingObserver", "enable", "messaging_system"]

#: The instrumentation scope of the spans.
SCOPE = "unified_jobs"


def messaging_system(jobs: Jobs) -> str:
    """``messaging.system`` of an app's spans: its queue kind, lower case (``redis``,
    ``postgres``, ``sqlite``, ``rabbitmq``) in BackgroundQueue mode, else ``unified_jobs``."""
    queue = jobs.config.queue
    if jobs.config.workers.mode == "BackgroundQueue" and queue is not None:
        return str(queue.kind).lower()
    return "unified_jobs"


def enable(jobs: Jobs, tracer_provider: trace.TracerProvider | None = None) -> TracingObserver:
    """Trace ``jobs``' enqueues and attempts (replacing the observer it had, if any), to
    ``tracer_provider`` or the global one. ``Jobs`` calls this itself when the API is installed."""
    executor = jobs.executor
    for observer in executor.observers:
        if isinstance(observer, TracingObserver):
            executor.remove_observer(observer)
    observer = TracingObserver(messaging_system(jobs), tracer_provider)
    # First, so that the perform span is current while the other observers (metrics) run.
    executor.observers = (observer, *executor.observers)
    return observer


class TracingObserver(JobObserver):
    """The executor observer that makes the spans (see the module docstring)."""

    def __init__(self, system: str, tracer_provider: trace.TracerProvider | None = None) -> None:
        from unified_jobs import __version__

        self.system = system
        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        # Spans go to the global provider, which may be set later (``off`` until then); asked
        # for once here, so that one named by OTEL_PYTHON_TRACER_PROVIDER is loaded now.
        self._global = tracer_provider is None
        if self._global:
            trace.get_tracer_provider()

    @property
    def off(self) -> bool:
        """True while spans would go to no provider: the global one is not set yet."""
        # The API's own test (its ProxyTracer asks the same module global); a later API
        # without it counts as set.
        return self._global and getattr(trace, "_TRACER_PROVIDER", self) is None

    # -- enqueue -----------------------------------------------------------------------------

    def enqueuing(self, jobs: Sequence[Job]) -> tuple[trace.Span, object] | None:
        if self.off:
            return None
        first = jobs[0]
        attributes: dict[str, Any] = {
            "messaging.system": self.system,
            "messaging.operation.type": "send",
            "messaging.operation.name": "enqueue",
            "messaging.destination.name": first.queue,
            "unified_jobs.job.worker": first.name,
        }
        if len(jobs) == 1:
            attributes["messaging.message.id"] = attributes["unified_jobs.job.id"] = first.id
        else:
            attributes["messaging.batch.message_count"] = len(jobs)
        if first.run_at is not None:
            attributes["unified_jobs.job.run_at"] = first.run_at.isoformat()
        if first.priority is not None:
            attributes["unified_jobs.job.priority"] = first.priority
        span = self._tracer.start_span(
            f"unified_jobs.enqueue {first.name}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        return span, otel_context.attach(trace.set_span_in_context(span))

    def enqueued(
        self,
        jobs: Sequence[Job],
        handles: Sequence[JobHandle] | None,
        state: tuple[trace.Span, object] | None,
        error: BaseException | None,
    ) -> None:
        if state is None:
            return
        span, token = state
        otel_context.detach(token)  # type: ignore[arg-type]
        if handles is not None and span.is_recording():
            refused = [h.id for job, h in zip(jobs, handles, strict=True) if h.id != job.id]
            if refused and len(jobs) == 1:  # unique: the job already waiting or running
                span.set_attribute("unified_jobs.job.duplicate_of", refused[0])
            elif refused:
                span.set_attribute("unified_jobs.jobs.refused_as_duplicates", len(refused))
        if error is not None:
            _record_error(span, error, f"{type(error).__name__}: {error}")
        span.end()

    # -- carrying the context ----------------------------------------------------------------

    def inject(self, headers: dict[str, Any]) -> None:
        if not self.off:
            propagate.inject(headers)

    def capture(self) -> Context | None:
        if self.off:
            return None
        current = otel_context.get_current()
        return current or None  # an empty context: nothing worth carrying

    # -- perform -----------------------------------------------------------------------------

    def starting(self, job: Job, parent: Any) -> tuple[trace.Span, object] | None:
        if self.off:
            return None
        parent_context: Context | None
        if parent is None or isinstance(parent, Context):
            parent_context = parent  # None: the caller's (ForegroundBlocking's enqueue span)
        elif trace.get_current_span().get_span_context().is_valid:
            # Celery's own instrumentation made a span for this task (from the same headers).
            parent_context = None
        elif isinstance(parent, Mapping):
            parent_context = propagate.extract(parent)
        else:
            parent_context = Context()  # headers of an unknown form: a trace of its own
        span = self._tracer.start_span(
            f"unified_jobs.perform {job.name}",
            context=parent_context,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": self.system,
                "messaging.operation.type": "process",
                "messaging.operation.name": "perform",
                "messaging.destination.name": job.queue,
                "messaging.message.id": job.id,
                "unified_jobs.job.id": job.id,
                "unified_jobs.job.worker": job.name,
                "unified_jobs.job.attempt": job.attempt,
            },
        )
        return span, otel_context.attach(trace.set_span_in_context(span, parent_context))

    def ended(self, job: Job, outcome: Outcome, state: tuple[trace.Span, object] | None) -> None:
        if state is None:
            return
        span, token = state
        otel_context.detach(token)  # type: ignore[arg-type]
        kind = outcome.kind
        if span.is_recording():
            span.set_attribute("unified_jobs.job.outcome", "retried" if kind == "retry" else kind)
            if kind == "retry":
                span.set_attribute("unified_jobs.job.retry_in_seconds", outcome.delay)
        if kind in ("failed", "rejected", "retry") and outcome.error is not None:
            _record_error(span, outcome.error, outcome.error_text or repr(outcome.error))
        span.end()

    def settled_elsewhere(self, job: Job, outcome: Outcome) -> None:
        return None  # no attempt ran here: no span


def _record_error(span: trace.Span, error: BaseException, text: str) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, text))
