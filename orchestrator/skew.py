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

#: Times a worker without a step's code hands the step's message back (to be taken by a
#: worker that has the code) before it fails the step. With `HAND_BACK_PAUSE` this gives
#: workers with the code about ten seconds to take it.
HAND_BACK_LIMIT = 20
#: Seconds a handed-back message waits in the queue before it is delivered again.
HAND_BACK_PAUSE = 0.5


def hand_back_pause(handed_back: int) -> float | None:
    """Seconds to wait before the message comes again, or None: fail the step now.

    `handed_back` counts the times this message was already handed back. The one place
    that decides between "another worker may have the code" and "nobody has it": a
    grace period for deploys (ORCHESTRATOR_VERSION_GRACE) replaces this rule.
    """
    return HAND_BACK_PAUSE if handed_back < HAND_BACK_LIMIT else None


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
