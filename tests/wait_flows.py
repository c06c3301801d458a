"""Workflows with waiting nodes, for the API, CLI, dashboard and metrics tests.

Each opens with its waiting node, so `engine.start_run` leaves the run `waiting` at once,
without a worker: `sign-off` waits for a person's decision, `payment` for a correlated
event on `PAYMENTS`, `nap` for a timer already due (nothing fires it unless a recovery
process runs). `review` reaches its approval only after a task, beside a task that goes
on only when the test pushes `go:<run id>` on the side channel.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator import StepContext, Workflow
from tests.flows import side_channel

#: Topic only a wait listens to (no trigger names it).
PAYMENTS = "wait-test.payments"

signoff = Workflow("sign-off", description="Publish once a manager approves")
manager = signoff.approval("manager", timeout="3d")


@signoff.step(after=manager)
def publish(ctx: StepContext) -> dict:
    return {"published_after": ctx.results["manager"]["decision"]}


payment = Workflow("payment", description="Ship once the order's payment is confirmed")
paid = payment.wait_for_event(
    "paid",
    topic=PAYMENTS,
    match={"type": "payment.confirmed"},
    correlate={"order.id": lambda ctx: ctx.input["order_id"]},
    timeout="24h",
)


@payment.step(after=paid)
def ship(ctx: StepContext) -> dict:
    return {"shipped": ctx.results["paid"]["order"]["id"]}


nap = Workflow("nap", description="A sleep whose timer is due as soon as it opens")
doze = nap.sleep("doze", until=lambda ctx: datetime.now(UTC) - timedelta(minutes=1))


@nap.step(after=doze)
def wake(ctx: StepContext) -> dict:
    return {"awake": True}


review = Workflow("review", description="An approval after a task, beside a slower task")


@review.step
def prepare(ctx: StepContext) -> dict:
    return {"draft": 1}


@review.step
def notify(ctx: StepContext) -> dict:
    side_channel().blpop(f"go:{ctx.run_id}", timeout=60)
    return {"notified": True}


reviewed = review.approval("review", after=prepare)
