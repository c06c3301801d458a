"""Workflows for the harness's own tests: retries in due order, timeouts, a trigger."""

from __future__ import annotations

import time

from orchestrator import Concurrency, StepContext, Workflow, kafka_trigger

flaky = Workflow("harness-flaky", description="Fails twice, then succeeds; backoff 5s, then 10s.")


@flaky.step(retries=2, backoff=5.0)
def wobble(ctx: StepContext) -> dict:
    ctx.logger.info("attempt %d", ctx.attempt)
    if ctx.attempt < 3:
        raise ConnectionError(f"downstream unavailable (attempt {ctx.attempt})")
    return {"succeeded_on": ctx.attempt}


@flaky.step(after=wobble)
def settle(ctx: StepContext) -> dict:
    return {"after": ctx.results["wobble"]}


race = Workflow("harness-race", description="Two steps that fail once, with different backoffs.")


@race.step(retries=1, backoff=30.0)
def slow(ctx: StepContext) -> dict:
    if ctx.attempt == 1:
        raise RuntimeError("slow: first attempt fails")
    return {"attempt": ctx.attempt}


@race.step(retries=1, backoff=10.0)
def quick(ctx: StepContext) -> dict:
    if ctx.attempt == 1:
        raise RuntimeError("quick: first attempt fails")
    return {"attempt": ctx.attempt}


chain = Workflow(
    "harness-chain",
    description="Two steps; started by `thing.happened` events on `things`.",
    input_schema={"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
    triggers=[kafka_trigger("things", match={"type": "thing.happened"}, input=lambda e: e["thing"],
                            dedupe="thing.n")],
)


@chain.step
def first(ctx: StepContext) -> dict:
    return {"n": ctx.input["n"] + 1}


@chain.step(after=first, retries=1, backoff=60.0)
def second(ctx: StepContext) -> dict:
    return {"n": ctx.results["first"]["n"] * 10}


slowpoke = Workflow("harness-timeout", description="A step that outlives its timeout.")


@slowpoke.step(timeout=0.2)
def dawdle(ctx: StepContext) -> None:
    time.sleep(2)


serial = Workflow(
    "harness-serial",
    description="One run per customer at a time; the next waits for a slot.",
    concurrency=Concurrency(key="customer", limit=1),
)


@serial.step(retries=1, backoff=20.0)
def book(ctx: StepContext) -> dict:
    if ctx.input.get("fail_first") and ctx.attempt == 1:
        raise RuntimeError("booking system busy")
    return {"booked": ctx.input["ticket"]}
