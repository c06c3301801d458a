"""Workflows of the waiting-node benchmarks (bench/waits.py, bench/timers.py, bench/relay.py),
loaded by their worker and consumer processes as ORCHESTRATOR_WORKFLOWS=bench.wait_flows."""

from __future__ import annotations

from datetime import datetime

from orchestrator import StepContext, Workflow

#: The topic the event waits of `bench-waiter` listen on.
PAYMENTS = "bench.payments"
#: The topic `bench-emitter` emits to.
EMITTED = "bench.emitted"

waiter = Workflow("bench-waiter", description="Wait for the order's payment, then ship.")
payment = waiter.wait_for_event(
    "payment", topic=PAYMENTS, match={"type": "payment.confirmed"},
    correlate={"order.id": lambda ctx: ctx.input["order_id"]},
)


@waiter.step(after=payment)
def ship(ctx: StepContext) -> None:
    return None


sleeper = Workflow("bench-sleeper", description="Sleep until input.due, then wake.")
nap = sleeper.sleep("nap", until=lambda ctx: datetime.fromisoformat(ctx.input["due"]))


@sleeper.step(after=nap)
def wake(ctx: StepContext) -> None:
    return None


emitter = Workflow("bench-emitter", description="One step emitting input.count events.")


@emitter.step
def emit_all(ctx: StepContext) -> None:
    for n in range(ctx.input.get("first", 0), ctx.input.get("first", 0) + ctx.input.get("count", 1)):
        ctx.emit(EMITTED, {"n": n, "pad": "x" * 64}, key=f"k{n % 16}")
