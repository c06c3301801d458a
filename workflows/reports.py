"""Sales report: aggregate a batch of sale amounts in parallel shards, then publish a summary."""

from __future__ import annotations

import statistics

from orchestrator import StepContext, Workflow, kafka_trigger

flow = Workflow(
    "sales-report",
    description="Compute totals and statistics of a batch of sales, in parallel.",
    input_schema={
        "type": "object",
        "required": ["sales"],
        "properties": {"sales": {"type": "array", "items": {"type": "number"}}},
    },
    triggers=[kafka_trigger("reports", match={"type": {"in": ["report.requested"]}})],
    # What a caller's `flow.call("sales-report", ...)` node gets (workflows/nightly.py).
    output=lambda results: results["publish"],
)


@flow.step(timeout=60)
def load(ctx: StepContext) -> dict:
    sales = [float(x) for x in ctx.input["sales"]]
    ctx.logger.info("loaded %d sale(s)", len(sales))
    return {"sales": sales}


@flow.step(after=load)
def totals(ctx: StepContext) -> dict:
    sales = ctx.results["load"]["sales"]
    return {"count": len(sales), "sum": round(sum(sales), 2)}


@flow.step(after=load)
def distribution(ctx: StepContext) -> dict:
    sales = ctx.results["load"]["sales"]
    if not sales:
        return {"median": None, "max": None}
    return {"median": statistics.median(sales), "max": max(sales)}


@flow.step(after=[totals, distribution])
def publish(ctx: StepContext) -> dict:
    return {**ctx.results["totals"], **ctx.results["distribution"]}
