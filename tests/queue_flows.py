"""A workflow with a step on a queue of its own, for the queue-coverage tests."""

from __future__ import annotations

from orchestrator import StepContext, Workflow

billing = Workflow("billing-run")


@billing.step
def prepare(ctx: StepContext) -> str:
    return "prepared"


@billing.step(after=prepare, queue="payments")
def charge(ctx: StepContext) -> str:
    return "charged"
