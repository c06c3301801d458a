"""Workflows that only some workers load, and the first version of workflows a deploy changes.

`tests/skew_flows_v2.py` holds the second version of `evolving` and `shrinking`, so a test
can start a run with one version and move it on with the other (deploy skew).
"""

from __future__ import annotations

import time

from orchestrator import StepContext, Workflow
from tests.flows import record

#: Loaded by some workers only (ORCHESTRATOR_WORKFLOWS=tests.flows,tests.skew_flows).
only_here = Workflow("only-here")


@only_here.step()
def begin(ctx: StepContext) -> dict:
    record(ctx)
    time.sleep(ctx.input.get("sleep", 0))
    return {"n": ctx.input.get("n", 0)}


@only_here.step(after=begin)
def middle(ctx: StepContext) -> dict:
    record(ctx)
    return {"n": ctx.results["begin"]["n"] + 1}


@only_here.step(after=middle)
def end(ctx: StepContext) -> dict:
    record(ctx)
    return {"n": ctx.results["middle"]["n"] + 1}


def _step(ctx: StepContext) -> str:
    record(ctx)
    return ctx.step


#: v1: first -> last; v2 inserts `mid` between them.
evolving = Workflow("evolving")
evolving.step(_step, name="first")
evolving.step(_step, name="last", after="first")

#: v1: first -> last; v2 renames `last` to `final`.
shrinking = Workflow("shrinking")
shrinking.step(_step, name="first")
shrinking.step(_step, name="last", after="first")
