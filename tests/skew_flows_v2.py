"""The second version of the workflows in `tests/skew_flows.py`, as a deploy changed them."""

from __future__ import annotations

from orchestrator import StepContext, Workflow
from tests.flows import record


def _step(ctx: StepContext) -> str:
    record(ctx)
    return ctx.step


#: A step inserted mid-DAG: first -> mid -> last.
evolving = Workflow("evolving")
evolving.step(_step, name="first")
evolving.step(_step, name="mid", after="first")
evolving.step(_step, name="last", after="mid")

#: A step renamed: `last` is now `final`.
shrinking = Workflow("shrinking")
shrinking.step(_step, name="first")
shrinking.step(_step, name="final", after="first")
