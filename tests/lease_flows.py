"""Workflows of the lease tests: steps that hold the GIL, and steps that raise BaseExceptions.

Steps count their executions in Redis (see `tests.flows.record`).
"""

from __future__ import annotations

import ctypes

from orchestrator import StepContext, Workflow
from tests.flows import record

# -- a step whose process is alive but runs no Python: a C call that holds the GIL ---------
holds_the_gil = Workflow("holds-the-gil")


@holds_the_gil.step(retries=2, backoff=0.1)
def sleep_in_c(ctx: StepContext) -> dict:
    """libc's sleep through PyDLL, which (unlike CDLL) keeps the GIL for the whole call."""
    record(ctx)
    if ctx.attempt == 1 or not ctx.input.get("first_only"):
        ctypes.PyDLL(None).sleep(int(ctx.input["seconds"]))
    return {"attempt": ctx.attempt}


# -- steps that raise what is not an Exception ----------------------------------------------
class AbortStep(BaseException):
    """A BaseException of the user's own."""


RAISED = {"KeyboardInterrupt": KeyboardInterrupt, "SystemExit": SystemExit, "AbortStep": AbortStep}

raises = Workflow("raises-base-exception")


@raises.step(retries=0)
def raise_it(ctx: StepContext) -> None:
    record(ctx)
    raise RAISED[ctx.input["raise"]](f"raised by the step: {ctx.input['raise']}")


well_behaved = Workflow("well-behaved")


@well_behaved.step
def succeed(ctx: StepContext) -> str:
    record(ctx)
    return "done"
