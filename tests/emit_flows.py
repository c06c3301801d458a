"""Workflows that emit events (`ctx.emit`) and one triggered by what they emit.

Loaded beside tests.kafka_flows by the emit/relay tests; topics start with
ORCHESTRATOR_TEST_TOPIC_PREFIX, so each test has its own.
"""

from __future__ import annotations

from orchestrator import StepContext, Workflow, kafka_trigger
from tests.kafka_flows import topic

#: Topic the emitter writes to and the reader is triggered by.
EMITTED = topic("emitted")

emitter = Workflow("emitter")


@emitter.step(retries=1, backoff=0.1)
def announce(ctx: StepContext) -> dict:
    """Emits `count` events (keys k0..k3) to `topic` (default `EMITTED`: the worker's own
    prefix may differ from the test's), then fails on attempt 1 when `fail_first`."""
    count = int(ctx.input.get("count", 1))
    target = ctx.input.get("topic", EMITTED)
    for n in range(count):
        ctx.emit(target, {"n": n, "attempt": ctx.attempt, "run": ctx.run_id},
                 key=f"k{n % 4}", headers={"source": "emitter", "raw": b"\xff\x00"})
    if ctx.attempt == 1 and ctx.input.get("fail_first"):
        raise RuntimeError("the first attempt fails after emitting")
    return {"emitted": count}


reader = Workflow("emitted-reader", triggers=[kafka_trigger(EMITTED)])


@reader.step
def read(ctx: StepContext) -> dict:
    return {"n": ctx.input.get("n"), "attempt": ctx.input.get("attempt")}
