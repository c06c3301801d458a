"""Scheduled workflows of the scheduler tests (loaded only by them: a schedule would start
runs in every other test's workers)."""

from __future__ import annotations

from datetime import datetime

from orchestrator import StepContext, Workflow, schedule


def _noop(flow: Workflow) -> None:
    @flow.step
    def work(ctx: StepContext) -> dict:
        return {"input": ctx.input}


#: One per catchup policy, every minute; `capped-catchup` keeps at most 3 missed ticks.
LATEST = Workflow("latest-catchup", triggers=[schedule("* * * * *", catchup="latest")])
ALL = Workflow("all-catchup", triggers=[schedule("* * * * *", catchup="all",
                                                 input=lambda tick: {"minute": tick.minute})])
CAPPED = Workflow("capped-catchup", triggers=[schedule("* * * * *", catchup="all", max_catchup=3)])
NONE = Workflow("no-catchup", triggers=[schedule("* * * * *", catchup="none")])
for _flow in (LATEST, ALL, CAPPED, NONE):
    _noop(_flow)


def _no_region(tick: datetime) -> dict:
    raise ValueError(f"no region configured for {tick:%H:%M}")


#: Its input function raises: its ticks start no run, and say why.
BROKEN = Workflow("broken-input", triggers=[schedule("* * * * *", input=_no_region),
                                            schedule("*/2 * * * *", input=lambda tick: ["not", "a", "dict"])])
_noop(BROKEN)

UNSCHEDULED = Workflow("unscheduled")
_noop(UNSCHEDULED)
