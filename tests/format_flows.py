"""Workflows with CloudEvents, text and key/header triggers, for tests/integration/test_event_formats.py.

Loaded with the Kafka test workflows (ORCHESTRATOR_WORKFLOWS); topics start with
ORCHESTRATOR_TEST_TOPIC_PREFIX, so each test has its own.
"""

from __future__ import annotations

from orchestrator import StepContext, Workflow, kafka_trigger
from tests.kafka_flows import topic

# -- CloudEvents: big orders, binary or structured mode --------------------------------------
big_orders = Workflow("ce-big-orders", triggers=[kafka_trigger(
    topic("cloud"), format="cloudevents",
    match={"type": "com.shop.order.created", "data.total": {"gte": 100}},
)])


@big_orders.step
def bill(ctx: StepContext) -> dict:
    return {"billed": ctx.input["data"]["total"]}


# -- JSON events routed by their key and a header ---------------------------------------------
vip_orders = Workflow("vip-orders", triggers=[kafka_trigger(
    topic("keyed"), match={"$key": "vip", "$headers.region": "eu"},
    input={"order": "order.id", "customer": "$key", "region": "$headers.region"},
)])


@vip_orders.step
def greet(ctx: StepContext) -> dict:
    return {"greeted": ctx.input["customer"]}


# -- plain text lines ----------------------------------------------------------------------------
notes = Workflow("text-notes", triggers=[kafka_trigger(topic("notes"), format="text")])


@notes.step
def file_note(ctx: StepContext) -> dict:
    return {"length": len(ctx.input["text"])}
