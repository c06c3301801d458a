"""Workflows with Kafka triggers, for the consumer tests.

Loaded with ORCHESTRATOR_WORKFLOWS="tests.flows,tests.kafka_flows". Topic names start with
ORCHESTRATOR_TEST_TOPIC_PREFIX, so each test (each consumer process) has topics of its own.
Steps count their executions in Redis (see `tests.flows.record`).
"""

from __future__ import annotations

import os
import time
from typing import Any

from orchestrator import Concurrency, StepContext, Workflow, kafka_trigger
from tests.flows import record

PREFIX = os.environ.get("ORCHESTRATOR_TEST_TOPIC_PREFIX", "test.")


def topic(name: str, prefix: str = PREFIX) -> str:
    return f"{prefix}{name}"


# -- orders: one event may start two workflows; dedupe on the order id ---------------------
fulfilment = Workflow(
    "order-fulfilment",
    triggers=[
        kafka_trigger(
            topic("orders"),
            match={"type": "order.created", "order.total": {"gte": 100}},
            input=lambda event: {"order_id": event["order"]["id"], "total": event["order"]["total"]},
            dedupe="order.id",
        )
    ],
    input_schema={
        "type": "object",
        "required": ["order_id"],
        "properties": {"order_id": {"type": "integer"}, "total": {"type": "number"}},
    },
)


@fulfilment.step
def reserve(ctx: StepContext) -> dict:
    record(ctx)
    return {"reserved": ctx.input["order_id"]}


audit = Workflow("order-audit", triggers=[kafka_trigger(topic("orders"), match={"type": "order.created"})])


@audit.step
def note(ctx: StepContext) -> dict:
    record(ctx)
    return {"seen": ctx.input["order"]["id"]}


# -- bad events: functions that raise, a schema that fails ---------------------------------


def _strict_match(event: dict) -> bool:
    if event.get("explode") == "match":
        raise ValueError("match function exploded on purpose")
    return True


def _strict_input(event: dict) -> dict:
    if event.get("explode") == "input":
        raise KeyError("input function exploded on purpose")
    return {"n": event.get("n")}


strict = Workflow(
    "strict",
    triggers=[kafka_trigger(topic("bad"), match=_strict_match, input=_strict_input)],
    input_schema={"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
)


@strict.step
def accept(ctx: StepContext) -> int:
    record(ctx)
    return ctx.input["n"]


# -- load: many small events, a run for each "load" event -----------------------------------
load = Workflow("load", triggers=[kafka_trigger(topic("load"), match={"type": "load"})])


@load.step
def touch(ctx: StepContext) -> int:
    return ctx.input.get("i", 0)


# -- split: one event matches three workflows; planning two of them fails ------------------
split_ok = Workflow("split-ok", triggers=[kafka_trigger(topic("split"), match={"type": "split"})])


@split_ok.step
def proceed(ctx: StepContext) -> int:
    record(ctx)
    return ctx.input["n"]


split_key = Workflow(
    "split-key",
    triggers=[kafka_trigger(topic("split"), match={"type": "split"})],
    concurrency=Concurrency(key=lambda data: data["customer"]["id"]),  # KeyError: no customer
)


@split_key.step
def never_keyed(ctx: StepContext) -> None:
    record(ctx)


class _UnroutableWorkflow(Workflow):
    """Planning its runs raises something unexpected (as a bug in routing would)."""

    def queue_of(self, step: Any, partition_key: str | None) -> str:
        raise RuntimeError("routing table unavailable")


split_bug = _UnroutableWorkflow("split-bug", triggers=[kafka_trigger(topic("split"), match={"type": "split"})])


@split_bug.step
def never_routed(ctx: StepContext) -> None:
    record(ctx)


# -- slow: a match function that takes a second per event ----------------------------------
#: Seconds the slow trigger's match function takes per event.
SLOW_MATCH_SECONDS = 1.0


def _slow_match(event: dict) -> bool:
    """Counts its calls per event in Redis (`match:<i>`), then takes its time."""
    from tests.flows import side_channel

    side_channel().incr(f"match:{event.get('i')}")
    time.sleep(SLOW_MATCH_SECONDS)
    return True


slow = Workflow("slow-match", triggers=[kafka_trigger(topic("slow"), match=_slow_match)])


@slow.step
def after_slow_match(ctx: StepContext) -> int:
    return ctx.input.get("i", 0)


# -- windows: debounce per user, batches per tenant and overall ------------------------------
from orchestrator import Batch, Debounce  # noqa: E402

debounced = Workflow(
    "debounced",
    triggers=[kafka_trigger(topic("clicks"), input=lambda e: {"user": e["user"].get("id"), "n": e["n"]},
                            debounce=Debounce(key="user.id", period="1.5s", max_wait="4s"))],
    input_schema={"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
)


@debounced.step
def settle(ctx: StepContext) -> dict:
    record(ctx)
    return {"events": ctx.input["$events"]}


batched = Workflow("batched", triggers=[kafka_trigger(topic("rows"), batch=Batch(max_size=5, window="1.5s"))])


@batched.step
def load_rows(ctx: StepContext) -> int:
    record(ctx)
    return len(ctx.input["events"])


per_tenant = Workflow(
    "per-tenant",
    triggers=[kafka_trigger(topic("tenants"), batch=Batch(max_size=100, window="1.5s", key="tenant"))],
)


@per_tenant.step
def load_tenant(ctx: StepContext) -> int:
    record(ctx)
    return len(ctx.input["events"])
