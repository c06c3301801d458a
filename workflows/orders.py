"""Order fulfilment: reserve stock, charge, then ship (express only when asked for).

Started by `order.created` events on the `orders` topic, or by hand:

    orchestrator trigger order-fulfilment --input '{"order_id": "A-1", "items": [{"sku": "tea", "qty": 2, "price": 4.5}]}'
"""

from __future__ import annotations

from orchestrator import StepContext, Workflow, kafka_trigger

ORDER_SCHEMA = {
    "type": "object",
    "required": ["order_id", "items"],
    "properties": {
        "order_id": {"type": ["string", "integer"]},
        "express": {"type": "boolean"},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["sku", "qty"],
                "properties": {
                    "sku": {"type": "string"},
                    "qty": {"type": "integer", "minimum": 1},
                    "price": {"type": "number", "minimum": 0},
                },
            },
        },
    },
}

flow = Workflow(
    "order-fulfilment",
    description="Reserve stock, charge the customer and ship the order.",
    input_schema=ORDER_SCHEMA,
    triggers=[
        kafka_trigger(
            "orders",
            match={"type": "order.created"},
            input=lambda event: event["order"],
            dedupe="order.order_id",
        ),
        # The same orders sent as CloudEvents (binary or structured mode): the order is the data.
        kafka_trigger(
            "orders",
            format="cloudevents",
            match={"type": "com.shop.order.created"},
            input=lambda event: event["data"],
            dedupe="data.order_id",
        ),
    ],
)


@flow.step(retries=3, backoff=2.0, timeout=30)
def reserve_stock(ctx: StepContext) -> dict:
    items = ctx.input["items"]
    ctx.logger.info("reserving %d line(s) for order %s", len(items), ctx.input["order_id"])
    return {"reserved": [{"sku": i["sku"], "qty": i["qty"]} for i in items]}


@flow.step(after=reserve_stock, queue="payments", retries=2, timeout=30)
def charge(ctx: StepContext) -> dict:
    total = round(sum(i["qty"] * i.get("price", 0) for i in ctx.input["items"]), 2)
    ctx.logger.info("charging %.2f", total)
    return {"charged": total, "currency": ctx.input.get("currency", "EUR")}


@flow.step(after=[reserve_stock, charge], when=lambda ctx: ctx.input.get("express"))
def ship_express(ctx: StepContext) -> dict:
    return {"carrier": "courier", "eta_days": 1}


@flow.step(after=[reserve_stock, charge], when=lambda ctx: not ctx.input.get("express"))
def ship_standard(ctx: StepContext) -> dict:
    return {"carrier": "post", "eta_days": 3}
