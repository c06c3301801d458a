"""The read side of composition, as the API, the dashboard and the CLI show it: a map's
progress and its items, a call node's child, a run's parent and children.

The rows are the engine's (`orchestrator.composing`): a map's items are `steps` rows with
`map_node` set, a call node's child is the run its latest `waits` row (kind `call`) names,
and a child run points at its parent with `parent_run_id`/`parent_step`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import composing as CM
from .. import composition as M
from .. import planner as P
from .models import Run, StepRun
from .queries import iso, run_dict, waits_of_run
from .versions import RunVersion

#: Statuses a map's item can be in (an item neither waits nor is skipped).
ITEM_STATUSES = (P.PENDING, P.QUEUED, P.RUNNING, P.RETRYING, P.SUCCEEDED, P.FAILED, P.CANCELLED)
#: Item statuses that are an end: what "done" counts in a map's progress.
ITEM_ENDED = (P.SUCCEEDED, P.FAILED, P.CANCELLED)
#: Children listed with a run (newest first); a run with more links to the runs list.
MAX_CHILDREN = 100
#: Items in one page when a request does not say, and the most it may ask for.
DEFAULT_ITEMS = 100
MAX_ITEMS = 1000


def map_summary(counts: Mapping[str, int] | None) -> dict[str, int]:
    """A map's progress with every item status present (0 when none), `total`, and
    `done` (items that ended, however): clients need not guess missing keys."""
    counts = counts or {}
    summary = {status: int(counts.get(status, 0)) for status in ITEM_STATUSES}
    summary["total"] = sum(summary.values())
    summary["done"] = sum(summary[s] for s in ITEM_ENDED)
    return summary


def composed_nodes(structure: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The map and call nodes of a structure (`versions.structure` or `Workflow.describe`),
    by name: what the drawings and the API label as such."""
    if not structure:
        return {}
    return {s["name"]: s for s in structure.get("steps", []) if s.get("kind") in (M.MAP, M.CALL)}


def planned_structure(versions: RunVersion) -> dict[str, Any] | None:
    """The structure a run is planned on: its version's, or the loaded one for a run from
    before versions (the one the run page draws)."""
    if versions.structure is None and versions.version is None:
        return versions.current_structure
    return versions.structure


def map_progress(session: Session, run_id: uuid.UUID, maps: Iterable[str] = ()) -> dict[str, dict[str, int]]:
    """Each map of a run with its `map_summary` (one query): the maps that have items,
    and `maps` (known from the structure) that have none yet."""
    found = CM.item_progress(session, run_id)
    for name in maps:
        found.setdefault(name, {})
    return {name: map_summary(counts) for name, counts in found.items()}


def child_ref(run: Any) -> dict[str, Any]:
    return {
        "id": str(run.id),
        "workflow": run.workflow,
        "status": run.status,
        "step": run.parent_step,
        "detached": bool(run.detached),
        "created_at": iso(run.created_at),
    }


def run_ref(session: Session, run_id: str | uuid.UUID) -> dict[str, Any] | None:
    """A short reference to a run (a child's page names its parent); None if it is gone."""
    row = session.execute(
        select(Run.id, Run.workflow, Run.status).where(Run.id == uuid.UUID(str(run_id)))
    ).one_or_none()
    return None if row is None else {"id": str(row.id), "workflow": row.workflow, "status": row.status}


def children_of(session: Session, run_id: uuid.UUID, limit: int = MAX_CHILDREN) -> list[dict[str, Any]]:
    """The runs this run started (its call nodes' children and `ctx.start_run`'s),
    newest first, at most `limit` (`ix_runs_parent`)."""
    rows = session.execute(
        select(Run.id, Run.workflow, Run.status, Run.parent_step, Run.detached, Run.created_at)
        .where(Run.parent_run_id == run_id)
        .order_by(Run.created_at.desc(), Run.id.desc())
        .limit(limit)
    ).all()
    return [child_ref(r) for r in rows]


def run_detail(session: Session, run: Run, structure: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run as `GET /api/runs/<id>` and `orchestrator run` show it: its steps with their
    latest waits, each map's progress, each call node's child, and the run's children.
    `structure` (its version's, if known) names the maps that have no item yet."""
    maps = [n for n, s in composed_nodes(structure).items() if s.get("kind") == M.MAP]
    return run_dict(
        run,
        waits=waits_of_run(session, run.id),
        maps=map_progress(session, run.id, maps),
        children=children_of(session, run.id),
    )


# -- a map's items ---------------------------------------------------------------------------


def is_map(session: Session, run_id: uuid.UUID, node: str, structure: Mapping[str, Any] | None) -> bool:
    """Whether `node` of a run is a map: its structure says so, or it has items (a run
    planned on a structure that is not recorded)."""
    if composed_nodes(structure).get(node, {}).get("kind") == M.MAP:
        return True
    return session.scalar(
        select(StepRun.id).where(StepRun.run_id == run_id, StepRun.map_node == node).limit(1)
    ) is not None


def item_dict(row: Any) -> dict[str, Any]:
    return {
        "index": row.map_index,
        "name": row.name,
        "status": row.status,
        "item": row.item,
        "attempts": row.attempts,
        "result": row.result,
        "error": row.error,
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
    }


def list_items(
    session: Session,
    run_id: uuid.UUID,
    node: str,
    *,
    status: str | None = None,
    after: int | None = None,
    limit: int = DEFAULT_ITEMS,
) -> list[dict[str, Any]]:
    """A page of a map's items in index order: those after index `after` (a keyset,
    never an OFFSET), in `status` if given."""
    c = StepRun.__table__.c
    query = select(c.map_index, c.name, c.status, c.item, c.attempts, c.result, c.error,
                   c.started_at, c.finished_at).where(c.run_id == run_id, c.map_node == node)
    if status is not None:
        query = query.where(c.status == status)
    if after is not None:
        query = query.where(c.map_index > after)
    return [item_dict(r) for r in session.execute(query.order_by(c.map_index).limit(limit)).all()]

