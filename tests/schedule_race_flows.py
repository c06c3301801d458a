"""The per-second schedule two scheduler processes race over (tests/schedule_racer.py)."""

from __future__ import annotations

from orchestrator import StepContext, Workflow, schedule

EVERY_SECOND = Workflow("every-second", triggers=[schedule("* * * * * *", catchup="all")])


@EVERY_SECOND.step
def work(ctx: StepContext) -> dict:
    return {}
