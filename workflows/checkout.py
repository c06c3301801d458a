"""Checkout: reserve stock, wait for the payment event, a manager's approval and a cool-off
period, then ship. Uses every node that waits, and emits events.

Drive it by hand (`orchestrator dev` running):

    orchestrator publish checkouts '{"type": "checkout.started", "checkout": {"order_id": "C-1", "items": [{"sku": "tea", "qty": 2}]}}' --key C-1
    orchestrator publish payments '{"type": "payment.confirmed", "order_id": "C-1", "amount": 9.0}' --key C-1
    orchestrator approve <run id> manager-approval --comment "looks fine"
    # one minute later `ship` runs and emits a `shipment.created` event on `shipments`
"""

from __future__ import annotations

from orchestrator import StepContext, Workflow, kafka_trigger

flow = Workflow(
    "checkout",
    description="Reserve stock, wait for payment and approval, cool off, then ship.",
    input_schema={
        "type": "object",
        "required": ["order_id", "items"],
        "properties": {"order_id": {"type": ["string", "integer"]}, "items": {"type": "array"}},
    },
    triggers=[
        kafka_trigger(
            "checkouts",
            match={"type": "checkout.started"},
            input=lambda event: event["checkout"],
            dedupe="checkout.order_id",
        )
    ],
)


@flow.step(retries=2)
def reserve(ctx: StepContext) -> dict:
    order = ctx.input["order_id"]
    ctx.emit("inventory", {"type": "stock.reserved", "order_id": order, "items": ctx.input["items"]},
             key=str(order))
    return {"reserved": len(ctx.input["items"])}


payment = flow.wait_for_event(
    "payment",
    after=reserve,
    topic="payments",
    match={"type": "payment.confirmed"},
    correlate={"order_id": lambda ctx: ctx.input["order_id"]},
    timeout="24h",
    on_timeout="fail",
    lookback="15m",  # a payment recorded up to 15 min before the wait opened counts
)

approval = flow.approval("manager-approval", after=payment, timeout="3d")

cool_off = flow.sleep("cool-off", after=approval, duration="1m")


@flow.step(after=cool_off)
def ship(ctx: StepContext) -> dict:
    paid = ctx.results["payment"]  # the payment event's payload
    order = ctx.input["order_id"]
    ctx.emit("shipments", {"type": "shipment.created", "order_id": order, "amount": paid.get("amount")},
             key=str(order))
    return {"shipped": True, "paid": paid.get("amount"),
            "approved_by": ctx.results["manager-approval"]["by"],
            "payment_offset": ctx.events["payment"]["offset"]}
