"""`python -m tests.tracing_launcher <orchestrator args>`: the real CLI, with a TracerProvider
set first whose spans are appended, one JSON object per line, to $TEST_SPANS_FILE.

The provider is set before the CLI starts, so the orchestrator uses it (as it would the one
`opentelemetry-instrument` sets); forked Celery pool children inherit it, and spans are
written as each ends (a simple processor), so a child killed at shutdown loses none.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class JsonLinesExporter(SpanExporter):
    """Appends each finished span to a file shared by every process of the test."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            context = span.get_span_context()
            lines.append(json.dumps({
                "name": span.name,
                "trace_id": f"{context.trace_id:032x}",
                "span_id": f"{context.span_id:016x}",
                "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                "attributes": dict(span.attributes or {}),
                "status": span.status.status_code.name,
                "pid": os.getpid(),
            }) + "\n")
        with open(self.path, "a", encoding="utf-8") as out:
            out.write("".join(lines))
        return SpanExportResult.SUCCESS


def main(argv: list[str]) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ["TEST_SPANS_FILE"])))
    trace.set_tracer_provider(provider)
    from orchestrator.cli import main as cli

    cli(argv, prog_name="orchestrator")


if __name__ == "__main__":
    main(sys.argv[1:])
