"""Workflows with nodes that wait for Kafka events, for tests/integration/test_waits.py.

A wait's topic is part of its workflow's version, so the test process, the workers and the
consumers must all see the same topic names: they share one prefix per pytest session,
ORCHESTRATOR_TEST_WAIT_PREFIX, set by the first import (in the test process) and inherited
by every process it starts. Tests keep apart by correlation values (a fresh order id each).
Steps count their executions in Redis (see `tests.flows.record`).
"""

from __future__ import annotations

import os
import uuid

from orchestrator import StepContext, Workflow
from tests.flows import record

PREFIX = os.environ.setdefault("ORCHESTRATOR_TEST_WAIT_PREFIX", f"w{uuid.uuid4().hex[:8]}.")

PAYMENTS = f"{PREFIX}payments"
LOOKBACK = f"{PREFIX}lookback"
#: Has two partitions (created so by the tests), for two consumers racing to one wait.
RACE = f"{PREFIX}race"
TIMEOUTS = f"{PREFIX}timeouts"
RETRIES = f"{PREFIX}retries"
#: What `announce` emits to; no trigger or wait reads it.
ANNOUNCED = f"{PREFIX}announced"
#: Topics the consumers read, with their partition counts.
WAIT_TOPICS = {PAYMENTS: 1, LOOKBACK: 1, RACE: 2, TIMEOUTS: 1, RETRIES: 1}


def order_id(ctx: StepContext) -> str:
    return ctx.input["order_id"]


# -- a wait after a step, its successor reads the event ------------------------------------
later = Workflow("wait-it-later")


@later.step
def reserve(ctx: StepContext) -> dict:
    record(ctx)
    return {"reserved": ctx.input["order_id"]}


payment = later.wait_for_event(
    "payment", after=reserve, topic=PAYMENTS, match={"type": "payment.confirmed"},
    correlate={"order.id": order_id}, timeout="120s",
)


@later.step(after=payment, retries=0)
def ship(ctx: StepContext) -> dict:
    """Emits one event and returns what it saw; its first attempt fails when `fail_ship`."""
    record(ctx)
    ctx.emit(ANNOUNCED, {"order_id": ctx.input["order_id"], "attempt": ctx.attempt},
             key=ctx.input["order_id"])
    if ctx.attempt == 1 and ctx.input.get("fail_ship"):
        raise RuntimeError("ship fails its first attempt after emitting")
    return {"payment": ctx.results["payment"], "event": ctx.events["payment"],
            "seen": sorted(ctx.results)}


# -- lookback: the wait is the root, so it opens in start_run ------------------------------
with_lookback = Workflow("wait-it-lookback")
looked = with_lookback.wait_for_event(
    "looked", topic=LOOKBACK, match={"type": "reply"}, correlate={"order.id": order_id},
    timeout="3s", lookback="5m",
)


@with_lookback.step(after=looked)
def after_looked(ctx: StepContext) -> dict:
    record(ctx)
    return {"seen": ctx.results["looked"]}


without_lookback = Workflow("wait-it-no-lookback")
unlooked = without_lookback.wait_for_event(
    "unlooked", topic=LOOKBACK, match={"type": "reply"}, correlate={"order.id": order_id}, timeout="3s",
)


@without_lookback.step(after=unlooked)
def after_unlooked(ctx: StepContext) -> dict:
    record(ctx)
    return {"seen": ctx.results["unlooked"]}


# -- two events race for one wait -----------------------------------------------------------
race = Workflow("wait-it-race")
raced = race.wait_for_event("raced", topic=RACE, correlate={"order.id": order_id}, timeout="120s")


@race.step(after=raced)
def after_race(ctx: StepContext) -> dict:
    record(ctx)
    return {"winner": ctx.events["raced"]["partition"]}


# -- timeouts ---------------------------------------------------------------------------------
timeout_fail = Workflow("wait-it-timeout-fail")
fails = timeout_fail.wait_for_event(
    "never-paid", topic=TIMEOUTS, correlate={"order.id": order_id}, timeout="2s", on_timeout="fail",
)


@timeout_fail.step(after=fails)
def after_fail(ctx: StepContext) -> None:
    record(ctx)


timeout_skip = Workflow("wait-it-timeout-skip")


@timeout_skip.step
def begin(ctx: StepContext) -> dict:
    record(ctx)
    return {"begun": True}


skips = timeout_skip.wait_for_event(
    "maybe-paid", after=begin, topic=TIMEOUTS, correlate={"order.id": order_id},
    timeout="2s", on_timeout="skip",
)


@timeout_skip.step(after=skips)
def only_if_paid(ctx: StepContext) -> None:
    record(ctx)


@timeout_skip.step(after=begin)
def regardless(ctx: StepContext) -> dict:
    record(ctx)
    return {"regardless": True}


# -- retry of a run failed by a wait's timeout ------------------------------------------------
retried = Workflow("wait-it-retry")
reply = retried.wait_for_event(
    "reply", topic=RETRIES, match={"type": "reply"}, correlate={"order.id": order_id},
    timeout="4s", lookback="5m",
)


@retried.step(after=reply)
def after_reply(ctx: StepContext) -> dict:
    record(ctx)
    return {"n": ctx.results["reply"]["n"]}
