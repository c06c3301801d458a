"""Bulk operator actions: retry or cancel many runs, chosen by id or by a filter.

Each run is retried in its own engine transaction, exactly as a single `retry_run` would.
Runs are cancelled `CANCEL_BATCH` at a time, each batch in one short transaction with the
effect of `cancel_run` on each of its runs (10,000 runs in seconds, never one long
transaction); a batch that fails is done again run by run, so one run that cannot be
touched never rolls back the others. A filter selects at most `limit` runs per call,
newest first, and only runs in a state the action applies to (so calling again with the
same filter moves on to the rest). A retry keeps each run on its own version unless the
call asks for `current_version` (see `WorkflowEngine.retry_run`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy.exc import OperationalError

from . import planner as P
from .db.queries import run_ids_matching
from .engine import WorkflowEngine
from .errors import OrchestratorError, RunNotFound

Action = Literal["retry", "cancel"]

#: Runs one bulk call touches at most when selecting by filter.
DEFAULT_BULK_LIMIT = 1000
#: Largest `limit` (and longest id list) a bulk call accepts.
MAX_BULK_LIMIT = 10_000
#: Runs cancelled per transaction: short enough not to hold many locks for long.
CANCEL_BATCH = 500
#: Run statuses each action can change; others are left alone.
APPLIES_TO: dict[str, tuple[str, ...]] = {
    "retry": (P.RUN_FAILED, P.RUN_CANCELLED),
    "cancel": (P.RUN_PENDING, P.RUN_RUNNING),
}


@dataclass(frozen=True)
class RunFilter:
    """Which runs a bulk action selects; `None` fields do not filter."""

    workflow: str | None = None
    status: str | None = None
    version: str | None = None
    since: datetime | None = None


@dataclass
class BulkResult:
    """What a bulk action did.

    `matched` runs were found (for a filter: those in a state the action applies to),
    `touched` of them changed; `remaining` says a filter matched more than `limit`.
    """

    action: str
    matched: int = 0
    touched: int = 0
    touched_ids: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    remaining: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "action": self.action,
            "matched": self.matched,
            "touched": self.touched,
            "runs": self.touched_ids,
            "not_found": self.not_found,
            "errors": self.errors,
            "remaining": self.remaining,
        }


def _apply(engine: WorkflowEngine, action: Action, run_id: str, current_version: bool) -> bool:
    if action == "retry":
        return engine.retry_run(run_id, current_version=current_version)
    return engine.cancel_run(run_id)


def bulk_action(
    engine: WorkflowEngine,
    action: Action,
    *,
    ids: Sequence[str] | None = None,
    where: RunFilter | None = None,
    limit: int = DEFAULT_BULK_LIMIT,
    current_version: bool = False,
) -> BulkResult:
    """Retry or cancel the runs in `ids`, or those `where` selects (one of the two);
    `current_version` retries each on the loaded definition (`WorkflowEngine.retry_run`)."""
    if action not in APPLIES_TO:
        raise ValueError(f"unknown bulk action {action!r}")
    if current_version and action != "retry":
        raise ValueError("current_version applies to retry only")
    result = BulkResult(action)
    if ids is not None:
        targets = list(dict.fromkeys(str(i) for i in ids))
    else:
        where = where or RunFilter()
        statuses = APPLIES_TO[action]
        if where.status is not None:
            statuses = tuple(s for s in statuses if s == where.status)
        if not statuses:
            return result
        with engine.sessions() as session:
            found = run_ids_matching(
                session, workflow=where.workflow, statuses=statuses, version=where.version,
                since=where.since, limit=limit + 1,
            )
        result.remaining = len(found) > limit
        targets = [str(i) for i in found[:limit]]
    if action == "cancel":
        for start in range(0, len(targets), CANCEL_BATCH):
            _cancel_batch(engine, targets[start : start + CANCEL_BATCH], result)
    else:
        for run_id in targets:
            _one(engine, action, run_id, result, current_version)
    return result


def _cancel_batch(engine: WorkflowEngine, batch: list[str], result: BulkResult) -> None:
    try:
        cancelled = engine.cancel_runs(batch)
    except (OrchestratorError, OperationalError):  # one run in the way (or a deadlock victim):
        # do this batch run by run, each in its own transaction
        for run_id in batch:
            _one(engine, "cancel", run_id, result)
        return
    for run_id in batch:
        _count(result, run_id, cancelled.get(run_id))


def _one(engine: WorkflowEngine, action: Action, run_id: str, result: BulkResult,
         current_version: bool = False) -> None:
    try:
        changed = _apply(engine, action, run_id, current_version)
    except RunNotFound:
        changed = None
    except OrchestratorError as exc:  # e.g. the run's workflow is no longer loaded
        result.matched += 1
        result.errors[run_id] = str(exc)
        return
    _count(result, run_id, changed)


def _count(result: BulkResult, run_id: str, changed: bool | None) -> None:
    """Record one run's outcome: None means there is no such run."""
    if changed is None:
        result.not_found.append(run_id)
        return
    result.matched += 1
    if changed:
        result.touched += 1
        result.touched_ids.append(run_id)
