"""Bulk operator actions: retry or cancel many runs, chosen by id or by a filter.

Each run is retried or cancelled in its own engine transaction, exactly as a single
`retry_run` / `cancel_run` would, so one run that cannot be touched never rolls back the
others. A filter selects at most `limit` runs per call, newest first, and only runs in a
state the action applies to (so calling again with the same filter moves on to the rest).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from . import planner as P
from .db.queries import run_ids_matching
from .engine import WorkflowEngine
from .errors import OrchestratorError, RunNotFound

Action = Literal["retry", "cancel"]

#: Runs one bulk call touches at most when selecting by filter.
DEFAULT_BULK_LIMIT = 1000
#: Largest `limit` (and longest id list) a bulk call accepts.
MAX_BULK_LIMIT = 10_000
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


def _apply(engine: WorkflowEngine, action: Action, run_id: str) -> bool:
    return engine.retry_run(run_id) if action == "retry" else engine.cancel_run(run_id)


def bulk_action(
    engine: WorkflowEngine,
    action: Action,
    *,
    ids: Sequence[str] | None = None,
    where: RunFilter | None = None,
    limit: int = DEFAULT_BULK_LIMIT,
) -> BulkResult:
    """Retry or cancel the runs in `ids`, or those `where` selects (one of the two)."""
    if action not in APPLIES_TO:
        raise ValueError(f"unknown bulk action {action!r}")
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
                session, workflow=where.workflow, statuses=statuses, since=where.since, limit=limit + 1
            )
        result.remaining = len(found) > limit
        targets = [str(i) for i in found[:limit]]
    for run_id in targets:
        try:
            changed = _apply(engine, action, run_id)
        except RunNotFound:
            result.not_found.append(run_id)
            continue
        except OrchestratorError as exc:  # e.g. the run's workflow is no longer loaded
            result.matched += 1
            result.errors[run_id] = str(exc)
            continue
        result.matched += 1
        if changed:
            result.touched += 1
            result.touched_ids.append(run_id)
    return result
