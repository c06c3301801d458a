"""Trigger rules and `fail_on`: the names a user may give, checked when a workflow is defined.

A node's trigger rule says which outcomes of its parents let it run (Airflow's names and
meanings; the planner applies them, see `planner.plan`):

* `all_success` (the default): every parent succeeded (or was skipped; a node whose
  parents were all skipped is skipped too).
* `all_done`: every parent is final, whatever its outcome.
* `one_success`: as soon as one parent succeeded, without waiting for the others.
* `one_failed`: as soon as one parent failed (or was cancelled because of a failure).
* `none_failed`: every parent is final and none failed; skipped parents count as not failed.

Pure: no I/O. Every kind of node (steps, waits, and what others add) passes its
`trigger_rule=` through `check_trigger_rule`, so a typo fails at import.
"""

from __future__ import annotations

from typing import Any

from .errors import WorkflowDefinitionError

ALL_SUCCESS = "all_success"
ALL_DONE = "all_done"
ONE_SUCCESS = "one_success"
ONE_FAILED = "one_failed"
NONE_FAILED = "none_failed"
#: Every trigger rule, the default first.
TRIGGER_RULES = (ALL_SUCCESS, ALL_DONE, ONE_SUCCESS, ONE_FAILED, NONE_FAILED)
#: The rule of a node that names none: today's behaviour.
DEFAULT_TRIGGER_RULE = ALL_SUCCESS
#: Rules under which a node may run although a parent failed: a succeeded node with one of
#: them, downstream of a failed step, has *handled* that failure (see `fail_on`).
ACCEPTS_FAILURE = frozenset({ALL_DONE, ONE_SUCCESS, ONE_FAILED})

#: `Workflow(fail_on=...)`: a run with a failed step fails (`any`, the default), or only
#: when a failed step was not handled by a step downstream of it (`unhandled`).
FAIL_ON_ANY = "any"
FAIL_ON_UNHANDLED = "unhandled"
FAIL_ON = (FAIL_ON_ANY, FAIL_ON_UNHANDLED)


def check_trigger_rule(workflow: str, node: str, value: Any) -> str:
    """`value` if it is a trigger rule, else a `WorkflowDefinitionError` naming the node."""
    if not isinstance(value, str) or value not in TRIGGER_RULES:
        raise WorkflowDefinitionError(
            f"workflow {workflow!r}: step {node!r} has trigger_rule={value!r}; "
            f"use one of {', '.join(TRIGGER_RULES)}"
        )
    return value


def check_fail_on(workflow: str, value: Any) -> str:
    """`value` if it is a `fail_on` choice, else a `WorkflowDefinitionError`."""
    if not isinstance(value, str) or value not in FAIL_ON:
        raise WorkflowDefinitionError(
            f"workflow {workflow!r}: fail_on={value!r}; use 'any' (a run with a failed step "
            "fails) or 'unhandled' (it fails only if a failure was not handled downstream)"
        )
    return value
