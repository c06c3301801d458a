"""Workflows of the long-life tests (graceful shutdown), loaded beside tests.flows.

Steps count their executions in Redis (see `tests.flows.record`).
"""

from __future__ import annotations

import time

from orchestrator import StepContext, Workflow
from tests.flows import record

# -- a retry that waits: its message sits in the worker, reserved but not started ----------
patient = Workflow("patient")


# 30 s: the retry must still be waiting, reserved, when the test looks at the broker, which
# on a machine loaded by the other test files can be more than 8 s after the first attempt.
@patient.step(retries=1, backoff=30)
def fails_first(ctx: StepContext) -> dict:
    record(ctx)
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails on purpose")
    return {"attempt": ctx.attempt}


# -- a step with no retries that outlasts a worker's shutdown timeout once -----------------
stubborn = Workflow("stubborn")


@stubborn.step
def outlasts_shutdown(ctx: StepContext) -> dict:
    record(ctx)
    time.sleep(ctx.input.get("sleep", 60) if ctx.attempt == 1 else 0.1)
    return {"attempt": ctx.attempt}
