"""Workflows of the trigger-rule and on_failure tests (tests/integration/test_trigger_rules.py).

A diamond `start -> (boom, fine) -> joins` whose `boom` branch fails, joined under each
trigger rule; `none_failed` also joins a branch skipped by its condition. Steps count
their executions in Redis (`tests.flows.record`), so the tests prove across worker
processes that nothing ran twice and what must not run did not.
"""

from __future__ import annotations

from orchestrator import StepContext, Workflow
from tests.flows import record, side_channel


def _diamond(name: str, *, fail_on: str = "any") -> Workflow:
    """start -> (boom: always fails, fine: succeeds) -> joins under each rule."""
    flow = Workflow(name, fail_on=fail_on)

    @flow.step
    def start(ctx: StepContext) -> str:
        record(ctx)
        return "started"

    @flow.step(after=start)
    def boom(ctx: StepContext) -> None:
        record(ctx)
        raise RuntimeError("boom branch broke")

    @flow.step(after=start)
    def fine(ctx: StepContext) -> str:
        record(ctx)
        return "fine"

    @flow.step(after=start, when=lambda ctx: False)
    def never(ctx: StepContext) -> str:
        record(ctx)
        return "a condition says no"

    @flow.step(after=[boom, fine], trigger_rule="all_done")
    def cleanup(ctx: StepContext) -> dict:
        record(ctx)
        return {"seen": sorted(ctx.results)}

    @flow.step(after=[boom, fine], trigger_rule="one_failed")
    def alarm(ctx: StepContext) -> str:
        record(ctx)
        return "raised the alarm"

    @flow.step(after=[fine, never], trigger_rule="none_failed")
    def tidy(ctx: StepContext) -> str:
        record(ctx)
        return "tidied"

    @flow.step(after=[boom, fine])
    def publish(ctx: StepContext) -> str:  # all_success: the failure cancels it
        record(ctx)
        return "must not run"

    return flow


#: The diamond with a failure handler that records what it saw.
diamond_rules = _diamond("rules-diamond")


@diamond_rules.on_failure(retries=1, backoff=0.1)
def alert(ctx: StepContext) -> dict:
    record(ctx)
    side_channel().set(f"failed:{ctx.run_id}", ",".join(sorted(ctx.failed)))
    return {"failed": ctx.failed, "results": sorted(ctx.results)}


#: The same diamond, whose failure `cleanup` and `alarm` handle: the run succeeds.
handled = _diamond("rules-handled", fail_on="unhandled")


@handled.on_failure
def never_alerted(ctx: StepContext) -> None:
    record(ctx)


#: A run that fails, with a failure handler that fails too (once per attempt, no loop).
broken_handler = Workflow("rules-broken-handler")


@broken_handler.step
def only(ctx: StepContext) -> None:
    record(ctx)
    raise ValueError("the only step failed")


@broken_handler.on_failure(retries=1, backoff=0.1)
def page_someone(ctx: StepContext) -> None:
    record(ctx)
    raise ConnectionError("pager unreachable")
