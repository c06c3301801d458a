"""The pure planner: given a run's step statuses, decide what happens next.

No I/O here. The engine loads statuses, asks the planner, and writes the answer back in
the same transaction, so every decision is unit-testable in microseconds.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
#: A child may start once every parent is in one of these.
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
    """What to write after a step changed: steps to queue, to skip, and the run's new status."""

    queue: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    run_status: str | None = None


def plan(deps: Mapping[str, Sequence[str]], statuses: Mapping[str, str]) -> Plan:
    """Decide the next moves of a run.

    * A pending step whose parents all succeeded or were skipped is queued, unless every
      parent was skipped: then it is skipped too (a branch whose condition was false).
    * Once any step has failed, nothing new starts: pending steps and waiting nodes are
      cancelled and the run fails when the steps still active have finished.
    * The run succeeds when every step is succeeded or skipped.
    """
    current = dict(statuses)
    result = Plan()
    failed = any(s == FAILED for s in current.values())
    if failed:
        for name, status in current.items():
            if status in (PENDING, WAITING):
                result.cancel.append(name)
                current[name] = CANCELLED
    else:
        changed = True
        while changed:
            changed = False
            for name, parents in deps.items():
                if current.get(name) != PENDING:
                    continue
                parent_statuses = [current[p] for p in parents]
                if not all(s in PARENT_DONE for s in parent_statuses):
                    continue
                if parents and all(s == SKIPPED for s in parent_statuses):
                    current[name] = SKIPPED
                    result.skip.append(name)
                    changed = True
                else:
                    current[name] = QUEUED
                    result.queue.append(name)
    result.run_status = run_outcome(current.values())
    return result


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


def affected_by_retry(deps: Mapping[str, Sequence[str]], statuses: Mapping[str, str]) -> list[str]:
    """Steps a retry re-runs: failed and cancelled steps and everything downstream of them.

    Succeeded steps upstream keep their results.
    """
    from .dag import children

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
