"""Workflows used by the benchmarks."""

from __future__ import annotations

from orchestrator import Concurrency, StepContext, Workflow

chain = Workflow("bench-chain", description="Three no-op steps in a row.")


@chain.step
def one(ctx: StepContext) -> None:
    return None


@chain.step(after=one)
def two(ctx: StepContext) -> None:
    return None


@chain.step(after=two)
def three(ctx: StepContext) -> None:
    return None

limited = Workflow(
    "bench-limited",
    description="One no-op step, one run at a time per customer (admission benchmark).",
    concurrency=Concurrency(key="customer", limit=1),
)


@limited.step
def only(ctx: StepContext) -> None:
    return None
