"""The first version of two workflows a deploy changes, for the rolling-deploy tests.

`tests/deploy_v2.py` is the same workflows after the deploy: `renaming` renames `b` to
`b2`, `growing` inserts `audit` between `a` and `c`.
"""

from __future__ import annotations

import time

from orchestrator import StepContext, Workflow
from tests.flows import record


def _step(ctx: StepContext) -> dict:
    record(ctx)
    time.sleep(ctx.input.get(f"sleep_{ctx.step}", 0))
    return {"step": ctx.step, "after": sorted(ctx.results)}


renaming = Workflow("renaming")
renaming.step(_step, name="a")
renaming.step(_step, name="b", after="a")
renaming.step(_step, name="c", after="b")

growing = Workflow("growing")
growing.step(_step, name="a")
growing.step(_step, name="c", after="a")
