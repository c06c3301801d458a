"""Workflows used by the benchmarks."""

from __future__ import annotations

from orchestrator import StepContext, Workflow

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
