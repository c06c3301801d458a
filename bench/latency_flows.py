"""The workflow of `bench/event_latency.py`: one no-op step started by a Kafka event."""

from __future__ import annotations

from orchestrator import StepContext, Workflow, kafka_trigger

TOPIC = "bench.latency"

latency = Workflow("bench-latency", triggers=[kafka_trigger(TOPIC)],
                   description="One no-op step per event (event-to-first-step latency).")


@latency.step
def first(ctx: StepContext) -> None:
    return None
