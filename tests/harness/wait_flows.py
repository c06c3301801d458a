"""Workflows with nodes that wait, for the harness tests of their semantics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator import Workflow, kafka_trigger

orders = Workflow("wait-order", triggers=[kafka_trigger("w-orders", match={"type": "created"})])


@orders.step
def reserve(ctx):
    return {"order": ctx.input["id"]}


paid = orders.wait_for_event(
    "paid", after=reserve, topic="w-payments", match={"type": "paid"},
    correlate={"order.id": lambda ctx: ctx.results["reserve"]["order"]},
    timeout="1h", lookback="5m",
)


@orders.step(after=paid)
def ship(ctx):
    return {"amount": ctx.results["paid"]["amount"], "offset": ctx.events["paid"]["offset"]}


optional = Workflow("wait-optional")
bonus = optional.wait_for_event("bonus", topic="w-bonus", correlate={"user": lambda ctx: ctx.input["user"]},
                                timeout="10m", on_timeout="skip")


@optional.step(after=bonus)
def credit(ctx):
    return {"credited": True}


@optional.step
def welcome(ctx):
    return {"welcomed": True}


parallel = Workflow("wait-parallel")
first = parallel.approval("sign-off", timeout="2d")


@parallel.step
def risky(ctx):
    if ctx.input.get("fail"):
        raise RuntimeError("boom")
    return {}


@parallel.step(after=[first, risky])
def finish(ctx):
    return {}


sleepy = Workflow("wait-sleepy")
nap = sleepy.sleep("nap", until=lambda ctx: datetime.fromisoformat(ctx.input["until"]))


@sleepy.step(after=nap)
def wake(ctx):
    return ctx.results["nap"]


naps = Workflow("wait-two-naps")
nap_a = naps.sleep("nap-a", until=lambda ctx: datetime.fromisoformat(ctx.input["until"]))
nap_b = naps.sleep("nap-b", until=lambda ctx: datetime.fromisoformat(ctx.input["until"]))


@naps.step(after=[nap_a, nap_b])
def join(ctx):
    return sorted(ctx.results)


broken = Workflow("wait-broken")
broken.wait_for_event("never", topic="w-payments", correlate={"order.id": lambda ctx: ctx.input["missing"]})

fanin = Workflow("wait-twice")
fanin.wait_for_event("one", topic="w-payments", correlate={"order.id": lambda ctx: ctx.input["id"]})
fanin.wait_for_event("two", topic="w-payments", correlate={"order.id": lambda ctx: ctx.input["id"]},
                     match={"amount": {"gte": 10}})


def later(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
