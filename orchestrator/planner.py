"""The pure planner: given a run's step statuses, decide what happens next.

No I/O here. The engine loads statuses, asks the planner, and writes the answer back in
the same transaction, so every decision is unit-testable in microseconds.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from . import rules as R
from .dag import ancestors, children

# Step statuses.
PENDING = "pending"
QUEUED = "queued"
RUNNING = "running"
RETRYING = "retrying"
SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"
CANCELLED = "cancelled"
#: A node that waits (for an event, a decision or a timer) is open: it holds no worker.
WAITING = "waiting"

STEP_STATUSES = (PENDING, QUEUED, RUNNING, RETRYING, WAITING, SUCCEEDED, FAILED, SKIPPED, CANCELLED)
STEP_FINAL = frozenset({SUCCEEDED, FAILED, SKIPPED, CANCELLED})
STEP_ACTIVE = frozenset({QUEUED, RUNNING, RETRYING})
#: An `all_success` child may start once every parent is in one of these.
PARENT_DONE = frozenset({SUCCEEDED, SKIPPED})

# Run statuses.
RUN_PENDING = "pending"
RUN_RUNNING = "running"
RUN_SUCCEEDED = "succeeded"
RUN_FAILED = "failed"
RUN_CANCELLED = "cancelled"
RUN_STATUSES = (RUN_PENDING, RUN_RUNNING, RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELLED)
RUN_FINAL = frozenset({RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELLED})


@dataclass
class Plan:
    """What to write after a step changed: steps to queue, to skip, to cancel (each with
    its reason in `reasons`), and the run's new status."""

    queue: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    run_status: str | None = None
    #: Why each node in `skip` and `cancel` is, in the user's words (shown on the run page).
    reasons: dict[str, str] = field(default_factory=dict)


#: What a trigger rule says of a pending node, given its parents' statuses (`verdict`).
RUN = "run"
SKIP = "skip"
CANCEL = "cancel"


def plan(
    deps: Mapping[str, Sequence[str]],
    statuses: Mapping[str, str],
    *,
    rules: Mapping[str, str] | None = None,
    on_failure: str | None = None,
    fail_on: str = R.FAIL_ON_ANY,
) -> Plan:
    """Decide the next moves of a run.

    `deps` maps each node of the DAG to its parents; `rules` holds the nodes whose trigger
    rule is not `all_success`; `on_failure` names the failure handler, a node outside the
    DAG (in `statuses`, not in `deps`).

    * A pending node whose parents' outcomes satisfy its trigger rule is queued (`verdict`);
      one whose rule can no longer be met is skipped (its parents did not fail: e.g. an
      `all_success` node whose parents were all skipped, a `one_failed` node whose parents
      all succeeded) or cancelled (a parent failed or was cancelled: Airflow's
      `upstream_failed`), and what follows it is decided in the same plan.
    * Once the run is bound to fail (`fail_on="any"`: a step failed; `"unhandled"`: a failed
      step can no longer be handled), nothing new starts that no trigger rule waits for:
      pending and waiting nodes are cancelled, except the nodes with a rule other than
      `all_success`, what leads to them and what follows them, which go on by their rules.
      A workflow without trigger rules thus behaves as it always did: the first failure
      stops it.
    * When every node of the DAG is final: the run's outcome is `outcome_with_rules`. If it is
      `failed` and the workflow has a failure handler, the handler is queued, and the run
      fails only once the handler has settled (whatever its own outcome); otherwise the
      handler is skipped.
    """
    rules = rules or {}
    current = dict(statuses)
    result = Plan()
    protected = _protected(deps, rules) if rules else frozenset()
    origin: dict[str, str] = {}  # a node cancelled here -> the failed step that caused it
    changed = True
    while changed:
        changed = False
        failed = [n for n in deps if current.get(n) == FAILED]
        bound = bool(failed) and (fail_on == R.FAIL_ON_ANY or any(
            not _handled(deps, current, rules, f) and not _may_handle(deps, current, rules, f)
            for f in failed
        ))
        for name, parents in deps.items():
            status = current.get(name)
            if status not in (PENDING, WAITING):
                continue
            if bound and name not in protected:
                _cancel(result, current, name, failed[0], origin)
                changed = True
                continue
            if status == WAITING:
                continue  # opened already: its wait decides it
            parent_statuses = [current[p] for p in parents]
            rule = rules.get(name, R.DEFAULT_TRIGGER_RULE)
            answer = verdict(rule, parent_statuses)
            if answer == RUN:
                current[name] = QUEUED
                result.queue.append(name)
            elif answer == SKIP:
                current[name] = SKIPPED
                result.skip.append(name)
                result.reasons[name] = _skip_reason(rule, parents)
                changed = True
            elif answer == CANCEL:
                cause = next((p for p in parents if current[p] == FAILED), None)
                if cause is None:
                    cause = next((origin[p] for p in parents if p in origin), None)
                _cancel(result, current, name, cause or (failed[0] if failed else None), origin)
                changed = True
    dag = {n: current[n] for n in deps}
    dag.update({n: s for n, s in current.items() if n not in deps and n != on_failure})
    outcome = outcome_with_rules(deps, dag, rules, fail_on)
    if outcome is None or on_failure is None or on_failure not in current:
        result.run_status = outcome
        return result
    handler = current[on_failure]
    if outcome == RUN_FAILED:
        if handler == PENDING:
            result.queue.append(on_failure)
        elif handler in STEP_FINAL:
            result.run_status = RUN_FAILED
        return result
    if handler == PENDING:
        result.skip.append(on_failure)
        result.reasons[on_failure] = "the run did not fail"
        handler = SKIPPED
    if handler in STEP_FINAL:
        result.run_status = outcome
    return result


def verdict(rule: str, parents: Sequence[str]) -> str | None:
    """What `rule` says of a pending node whose parents have `parents` statuses: RUN, SKIP,
    CANCEL, or None (not yet: a parent it needs is still open). A node without parents runs.

    A cancelled parent counts as failed (it was stopped by a failure, like Airflow's
    `upstream_failed`); a skipped parent counts as not failed.
    """
    if not parents:
        return RUN
    ok = sum(1 for s in parents if s == SUCCEEDED)
    bad = sum(1 for s in parents if s in (FAILED, CANCELLED))
    skipped = sum(1 for s in parents if s == SKIPPED)
    still_open = len(parents) - ok - bad - skipped
    if rule == R.ALL_DONE:
        return None if still_open else RUN
    if rule == R.ONE_SUCCESS:  # Airflow: fires as soon as one parent succeeded
        if ok:
            return RUN
        return None if still_open else (CANCEL if bad else SKIP)
    if rule == R.ONE_FAILED:  # as soon as one parent failed
        if bad:
            return RUN
        return None if still_open else SKIP
    if bad:  # all_success, none_failed: a failed parent dooms them at once
        return CANCEL
    if still_open:
        return None
    if rule == R.NONE_FAILED:
        return RUN
    return SKIP if skipped == len(parents) else RUN


def run_outcome(statuses: Sequence[str] | object) -> str | None:
    """The final run status implied by its steps, or None while any step is still open."""
    values = list(statuses)  # type: ignore[call-overload]
    if any(s not in STEP_FINAL for s in values):
        return None
    if any(s == FAILED for s in values):
        return RUN_FAILED
    if any(s == CANCELLED for s in values):
        return RUN_CANCELLED
    return RUN_SUCCEEDED


def outcome_with_rules(
    deps: Mapping[str, Sequence[str]],
    statuses: Mapping[str, str],
    rules: Mapping[str, str],
    fail_on: str = R.FAIL_ON_ANY,
) -> str | None:
    """`run_outcome` under `fail_on`: with `"unhandled"`, a run whose every failed step
    was handled succeeds. A failed step is *handled* when a node downstream of it whose
    trigger rule accepts failure (`all_done`, `one_success`, `one_failed`) succeeded;
    nodes cancelled because of a handled failure do not make the run fail then."""
    outcome = run_outcome(statuses.values())
    if outcome == RUN_FAILED and fail_on == R.FAIL_ON_UNHANDLED and all(
        _handled(deps, statuses, rules, n) for n, s in statuses.items() if s == FAILED
    ):
        return RUN_SUCCEEDED
    return outcome


def handled_failures(
    deps: Mapping[str, Sequence[str]], statuses: Mapping[str, str], rules: Mapping[str, str]
) -> list[str]:
    """The failed nodes that a node downstream of them has handled (see `run_outcome`)."""
    return [n for n in deps if statuses.get(n) == FAILED and _handled(deps, statuses, rules, n)]


def _cancel(result: Plan, current: dict[str, str], name: str, cause: str | None,
            origin: dict[str, str]) -> None:
    current[name] = CANCELLED
    result.cancel.append(name)
    result.reasons[name] = f"step {cause!r} failed" if cause else "a parent was cancelled"
    if cause:
        origin[name] = cause


def _skip_reason(rule: str, parents: Sequence[str]) -> str:
    if rule == R.ONE_FAILED:
        return "trigger rule one_failed: no parent failed"
    if rule == R.ONE_SUCCESS:
        return "trigger rule one_success: no parent succeeded"
    return f"every parent was skipped ({', '.join(repr(p) for p in parents)})"


def _descendants(deps: Mapping[str, Sequence[str]], node: str) -> set[str]:
    kids = children(deps)
    seen: set[str] = set()
    todo = list(kids.get(node, ()))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(kids.get(name, ()))
    return seen


def _handled(deps: Mapping[str, Sequence[str]], statuses: Mapping[str, str],
             rules: Mapping[str, str], failed: str) -> bool:
    """Whether a node downstream of `failed` that accepts failure has succeeded."""
    return any(rules.get(d) in R.ACCEPTS_FAILURE and statuses.get(d) == SUCCEEDED
               for d in _descendants(deps, failed))


def _may_handle(deps: Mapping[str, Sequence[str]], statuses: Mapping[str, str],
                rules: Mapping[str, str], failed: str) -> bool:
    """Whether a node downstream of `failed` that accepts failure is still open."""
    return any(rules.get(d) in R.ACCEPTS_FAILURE and statuses.get(d) not in STEP_FINAL
               for d in _descendants(deps, failed))


def _protected(deps: Mapping[str, Sequence[str]], rules: Mapping[str, str]) -> frozenset[str]:
    """Nodes a failure does not stop: those with a trigger rule other than `all_success`,
    their ancestors (what the rule waits for) and their descendants (what follows it)."""
    found: set[str] = set()
    for name, rule in rules.items():
        if name in deps and rule != R.DEFAULT_TRIGGER_RULE:
            found.add(name)
            found.update(ancestors(deps, name))
            found.update(_descendants(deps, name))
    return frozenset(found)


def affected_by_retry(deps: Mapping[str, Sequence[str]], statuses: Mapping[str, str]) -> list[str]:
    """Steps a retry re-runs: failed and cancelled steps and everything downstream of them.

    Succeeded steps upstream keep their results.
    """
    kids = children(deps)
    todo = [name for name, s in statuses.items() if s in (FAILED, CANCELLED)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(kids.get(name, ()))
    return [name for name in deps if name in seen]


def backoff_delay(
    retry_number: int, backoff: float, max_backoff: float, jitter: float = 0.0
) -> float:
    """Seconds to wait before retry number `retry_number` (1 for the first retry).

    Exponential: backoff, 2*backoff, 4*backoff, ... capped at `max_backoff`, plus an
    optional random jitter of up to `jitter` times the delay to spread retry storms.
    """
    if retry_number < 1:
        raise ValueError("retry_number counts from 1")
    delay = min(max_backoff, backoff * (2 ** (retry_number - 1)))
    if jitter:
        delay += random.uniform(0, jitter * delay)
    return delay
