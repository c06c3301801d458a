"""Deploy skew: a run and the loaded code disagree. Pure decisions and their messages.

A deploy can remove a workflow, or rename, remove or insert a step, while runs started by
the old code are still live; during a rolling deploy, workers with old and new code share
a queue. The engine never guesses in that case: a worker without a step's code never
claims it (it hands the message back, see `hand_back_pause`), and a run whose recorded
steps differ from its workflow's definition fails with a message naming the difference.
"""

from __future__ import annotations

from collections.abc import Iterable

from .dsl import Workflow

#: Seconds a handed-back message first waits in the queue before it is delivered again;
#: each later hand-back of the same message waits `HAND_BACK_GROWTH` times longer, up to
#: `HAND_BACK_MAX_PAUSE`, so a ten-minute grace costs a few dozen deliveries, not thousands.
HAND_BACK_PAUSE = 0.5
HAND_BACK_GROWTH = 1.5
HAND_BACK_MAX_PAUSE = 10.0


def hand_back_pause(handed_back: int, waited: float, grace: float) -> float | None:
    """Seconds to wait before the message comes again, or None: fail the step now.

    `handed_back` counts the times this message was already handed back and `waited` the
    seconds since any worker first handed the step back. The one place that decides
    between "another worker of a rolling deploy may have the code" and "nobody has it":
    within `grace` (ORCHESTRATOR_VERSION_GRACE) the message goes back, after it the step
    fails. The last pause ends at the deadline, so the step fails close to it.
    """
    left = grace - waited
    if left <= 0:
        return None
    pause = min(HAND_BACK_MAX_PAUSE, HAND_BACK_PAUSE * HAND_BACK_GROWTH ** max(0, handed_back))
    return max(0.05, min(pause, left))


def grace_expired(error: str, grace: float) -> str:
    """The error of a step no worker with its code took within the grace period."""
    return f"{error}; no worker with its code took it within ORCHESTRATOR_VERSION_GRACE ({grace:g}s)"


def not_loaded(workflow: str, worker: str | None) -> str:
    """Why a worker cannot run a step: its workflow is not loaded there."""
    where = f"on worker {worker!r}" if worker else "in this process"
    return f"workflow {workflow!r} is not loaded {where} (deploy skew?)"


def step_not_defined(workflow: str, step: str) -> str:
    """Why a run cannot go on: it has a step that its workflow's definition lacks."""
    return f"deploy skew: run has step {step!r} that workflow {workflow!r} no longer defines"


def mismatch(workflow: Workflow, step_names: Iterable[str]) -> str | None:
    """How a run's recorded steps differ from its workflow's definition, or None if they agree."""
    recorded = set(step_names)
    for name in sorted(recorded):
        if name not in workflow.steps:
            return step_not_defined(workflow.name, name)
    for name in workflow.steps:
        if name not in recorded:
            return (
                f"deploy skew: workflow {workflow.name!r} now defines step {name!r} "
                "that this run does not have"
            )
    return None
