"""The contract app for the metrics and tracing tests' worker processes, plus a span exporter.

As ``tests.contract.contract_app`` (UJ_CONTRACT_CONFIG, UJ_CONTRACT_RECORD), and with
UJ_TRACE_FILE set, a global ``TracerProvider`` whose spans are written, one JSON object a line,
to that file as each ends (a ``SimpleSpanProcessor``: in the pool process that ran the job,
before the job is acked). Set at import, in the worker's main process: the pool processes
inherit it when they fork.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from tests.contract.contract_app import create_app
from unified_jobs import Jobs


def span_record(span: Any) -> dict[str, Any]:
    """What the tests read of a finished span."""
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "pid": os.getpid(),
    }


def _install_file_exporter(path: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class JsonLinesExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            lines = "".join(json.dumps(span_record(span)) + "\n" for span in spans)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, lines.encode())  # one write of a few lines with O_APPEND: not torn
            finally:
                os.close(fd)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter()))
    trace.set_tracer_provider(provider)


def app_from_env() -> Jobs:
    trace_file = os.environ.get("UJ_TRACE_FILE")
    if trace_file:
        _install_file_exporter(trace_file)
    return create_app()
