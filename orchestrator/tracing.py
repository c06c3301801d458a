"""Tracing: a W3C `traceparent` continued through runs with the OpenTelemetry API.

Spans: `event.intake` (the consumer, one per event, child of the event's `traceparent`
header when it has one), `run` (a run's start, child of the current context: the event's
intake, the step that started a child run, or whatever the caller traces) and `step` (one
per step attempt, child of its run's span, whichever worker runs it). The `run` span's
`traceparent` is kept on the run row and sent with every step message, so a re-sent
message (recovery) or another process continues the same trace.

On when the OpenTelemetry SDK is installed (the `otel` extra) and either a TracerProvider
is already set (a test, `opentelemetry-instrument`) or the standard variables ask for an
exporter (`OTEL_TRACES_EXPORTER=otlp|console`, or an `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`);
`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off. Off, every hook is one
check of the module flag `enabled`: nothing is imported or allocated per event.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import ConfigurationError

log = logging.getLogger("orchestrator.tracing")

#: The header (Kafka, Celery) carrying the W3C trace context.
TRACEPARENT = "traceparent"
#: Exporters `OTEL_TRACES_EXPORTER` may name (besides `none`).
EXPORTERS = ("otlp", "console")
#: Instrumentation scope of the orchestrator's spans.
SCOPE = "kafka-orchestrator"

#: True once `configure` found tracing on in this process; every hook checks it first.
enabled = False
_tracer: Any = None


def _wanted() -> str | None:
    """The exporter the OTEL_* variables ask for, or None (tracing off)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return None
    if exporter:
        first = exporter.split(",")[0].strip()
        if first not in EXPORTERS:
            raise ConfigurationError(
                f"OTEL_TRACES_EXPORTER={exporter!r} is not an exporter the orchestrator sets up: "
                f"use {', '.join(EXPORTERS)} or none"
            )
        return first
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return None


def configure(service: str) -> bool:
    """Turn tracing on in this process if it is configured (module docstring); idempotent.

    `service` names the process (`orchestrator-consume`, ...) when OTEL_SERVICE_NAME is unset.
    """
    global enabled, _tracer
    if enabled:
        return True
    try:
        wanted = _wanted()
    except ConfigurationError:
        raise
    try:
        from opentelemetry import trace
    except ImportError:
        if wanted:
            log.warning("tracing is configured (OTEL_* variables) but OpenTelemetry is not "
                        "installed: install kafka-orchestrator[otel]; tracing stays off")
        return False
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    provider = trace.get_tracer_provider()
    if not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        pass  # set by the user (opentelemetry-instrument) or a test: use it
    elif wanted is None:
        return False
    else:
        provider = _sdk_provider(service, wanted)
        if provider is None:
            return False
        trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer(SCOPE)
    enabled = True
    return True


def _sdk_provider(service: str, exporter: str) -> Any:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("tracing is configured (OTEL_* variables) but the OpenTelemetry SDK is not "
                    "installed: install kafka-orchestrator[otel]; tracing stays off")
        return None
    if exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        span_exporter: Any = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http: "
                        "install kafka-orchestrator[otel]; tracing stays off")
            return None
        span_exporter = OTLPSpanExporter()
    name = os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider


# -- context ---------------------------------------------------------------------------


def extract(headers: Iterable[tuple[str, Any]]) -> Any:
    """The context of message headers (`(name, bytes or str)` pairs); invalid ones are ignored."""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    for name, value in headers:
        if isinstance(name, str) and name.lower() in ("traceparent", "tracestate"):
            try:
                carrier[name.lower()] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError:
                continue
    return propagate.extract(carrier)


def context_of(traceparent: str | None) -> Any:
    """The context a stored or received `traceparent` stands for (None: the current one)."""
    if not traceparent:
        return None
    from opentelemetry import propagate

    return propagate.extract({TRACEPARENT: traceparent})


def traceparent_of(span: Any = None) -> str | None:
    """The `traceparent` of `span` (default: the current span), None without a valid one."""
    from opentelemetry import trace

    context = (span or trace.get_current_span()).get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The current span's `traceparent` when tracing is on and a span is active."""
    return traceparent_of() if enabled else None


@contextmanager
def attached(span: Any) -> Iterator[None]:
    """Make `span` current (None: change nothing) for the block."""
    if span is None:
        yield
        return
    from opentelemetry import trace

    with trace.use_span(span, end_on_exit=False):
        yield


# -- spans -----------------------------------------------------------------------------


def start_intake(topic: str, partition: int, offset: int, headers: Iterable[tuple[str, Any]]) -> Any:
    """An `event.intake` span for one Kafka message, child of its `traceparent` if any."""
    return _tracer.start_span(
        "event.intake", context=extract(headers), kind=_kind("CONSUMER"),
        attributes={"messaging.system": "kafka", "messaging.destination.name": topic,
                    "messaging.kafka.partition": partition, "messaging.kafka.offset": offset},
    )


def run_started(workflow: str, run_id: str) -> str | None:
    """Record a `run` span (child of the current context) and return its `traceparent`."""
    span = _tracer.start_span(
        "run", attributes={"orchestrator.workflow": workflow, "orchestrator.run_id": run_id}
    )
    span.end()
    return traceparent_of(span)


@contextmanager
def step_span(traceparent: str | None, workflow: str, run_id: str, step: str, attempt: int,
              queue: str | None) -> Iterator[Any]:
    """The span of one step attempt, child of its run's span (`traceparent`), current
    for the block; an exception escaping the block is recorded on it."""
    attributes: dict[str, Any] = {
        "orchestrator.workflow": workflow, "orchestrator.run_id": run_id,
        "orchestrator.step": step, "orchestrator.attempt": attempt,
    }
    if queue:
        attributes["orchestrator.queue"] = queue
    with _tracer.start_as_current_span(
        "step", context=context_of(traceparent), kind=_kind("CONSUMER"), attributes=attributes,
    ) as span:
        yield span


def failed(span: Any, error: str) -> None:
    """Mark `span` as failed with `error`."""
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, error[:1000]))


def _kind(name: str) -> Any:
    from opentelemetry.trace import SpanKind

    return getattr(SpanKind, name)


def with_traceparent(headers: Iterable[tuple[str, bytes]], traceparent: str | None) -> list[tuple[str, bytes]]:
    """`headers` with `traceparent` in place of any they had (unchanged when None)."""
    if traceparent is None:
        return list(headers)
    kept = [(k, v) for k, v in headers if not (isinstance(k, str) and k.lower() in ("traceparent", "tracestate"))]
    return [*kept, (TRACEPARENT, traceparent.encode("ascii"))]


def stamped(emits: list[Any]) -> list[Any]:
    """A step's emits (`emits.Emit`) with the current span's `traceparent` header, unless
    the step set one itself."""
    import dataclasses

    current = traceparent_of()
    if current is None:
        return emits
    header = (TRACEPARENT, current.encode("ascii"))
    return [e if any(k.lower() == TRACEPARENT for k, _ in e.headers)
            else dataclasses.replace(e, headers=(*e.headers, header)) for e in emits]


@contextmanager
def publish_span(topic: str) -> Iterator[str | None]:
    """`orchestrator publish`: a `publish` span (child of the `TRACEPARENT` variable's
    context, if set) whose `traceparent` the message carries; None with tracing off."""
    if not enabled:
        yield None
        return
    with _tracer.start_as_current_span(
        "publish", context=context_of(os.environ.get("TRACEPARENT")), kind=_kind("PRODUCER"),
        attributes={"messaging.system": "kafka", "messaging.destination.name": topic},
    ) as span:
        yield traceparent_of(span)
