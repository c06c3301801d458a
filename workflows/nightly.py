"""Nightly invoicing: a cron schedule, a map over the customers, a child workflow, a join
that runs whatever happened, and a failure handler. The issue's example, runnable.

Every night at 02:00 Paris time the run lists its customers, sends one invoice per
customer (20 at a time, each with its own retries), asks the `sales-report` workflow for a
report (a child run, waited for without holding a worker), closes the books whether or not
all of that worked, and alerts if the run failed.
"""

from __future__ import annotations

from orchestrator import StepContext, Workflow, schedule

#: Customers the example invoices when the run's input names none.
CUSTOMERS = ["c-001", "c-002", "c-003", "c-004", "c-005"]

nightly = Workflow(
    "nightly-invoices",
    description="Invoice every customer at 02:00 Paris time, then close the books.",
    triggers=[schedule("0 2 * * *", timezone="Europe/Paris", input={"region": "eu"})],
    output=lambda results: {"sent": len(results["send_invoice"])},
)


@nightly.step
def list_customers(ctx: StepContext) -> dict:
    return {"ids": ctx.input.get("customers", CUSTOMERS)}


@nightly.map(over=lambda ctx: ctx.results["list_customers"]["ids"], after=list_customers,
             concurrency=20, retries=3)
def send_invoice(ctx: StepContext) -> dict:
    if ctx.item in ctx.input.get("unreachable", []):
        raise ConnectionError(f"mail server refused the invoice of {ctx.item}")
    ctx.logger.info("invoice %d sent to %s", ctx.index, ctx.item)
    return {"customer": ctx.item, "ok": True}


# `sales-report` is workflows/reports.py: its output (the summary of `publish`) is this node's result.
report = nightly.call("sales-report", after=send_invoice,
                      input=lambda ctx: {"sales": [100 * (i + 1) for i, _ in enumerate(ctx.results["send_invoice"])]})


@nightly.step(after=[send_invoice, report], trigger_rule="all_done")
def close_books(ctx: StepContext) -> dict:
    invoices = ctx.results.get("send_invoice")
    return {"invoices": len(invoices) if invoices is not None else 0,
            "report": ctx.results.get("sales-report")}


@nightly.on_failure
def alert(ctx: StepContext) -> dict:
    ctx.logger.warning("nightly invoicing failed: %s", ctx.failed)
    return {"alerted": sorted(ctx.failed)}
