"""Workflows whose runs `dashboard_latency.py` seeds (never executed: only their DAGs are drawn)."""

from __future__ import annotations

from orchestrator import StepContext, Workflow

shop = Workflow("bench-shop", description="reserve -> (charge, notify) -> ship")


@shop.step
def reserve(ctx: StepContext) -> None:
    return None


@shop.step(after=reserve)
def charge(ctx: StepContext) -> None:
    return None


@shop.step(after=reserve)
def notify(ctx: StepContext) -> None:
    return None


@shop.step(after=[charge, notify])
def ship(ctx: StepContext) -> None:
    return None


audit = Workflow("bench-audit", description="fetch -> check -> flag -> report")


@audit.step
def fetch(ctx: StepContext) -> None:
    return None


@audit.step(after=fetch)
def check(ctx: StepContext) -> None:
    return None


@audit.step(after=check)
def flag(ctx: StepContext) -> None:
    return None


@audit.step(after=flag)
def report(ctx: StepContext) -> None:
    return None
