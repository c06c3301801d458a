"""A traced workflow for the tracing tests: two steps, the second emits an event.

Loaded with the Kafka test workflows; topics start with ORCHESTRATOR_TEST_TOPIC_PREFIX.
"""

from __future__ import annotations

import logging

from orchestrator import StepContext, Workflow, kafka_trigger
from tests.kafka_flows import topic

traced = Workflow("traced", triggers=[kafka_trigger(topic("traced"), match={"type": "traced"})])


@traced.step
def first(ctx: StepContext) -> int:
    logging.getLogger("tests.traced").info("first step of %s", ctx.run_id)
    return 1


@traced.step(after=[first])
def second(ctx: StepContext) -> int:
    ctx.emit(topic("traced-out"), {"done": ctx.run_id})
    return ctx.results["first"] + 1
