"""The database side of composition: a map's item rows and a call's links to its child.

The specs are in `orchestrator.composition` (pure); the transitions are the engine's. An
item is a `steps` row (`map_node`, `map_index`, `item` set) that workers claim, retry and
heartbeat like any step; a node's rows are the ones with `map_node IS NULL` (what
`Run.steps` holds). Item statements touch only item rows, never the run's row: a map of
thousands of items does not serialise on one lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, exists, func, select, update
from sqlalchemy.orm import Session

from . import composition as M
from . import planner as P
from . import waits as W
from .db.models import Run, StepRun, Wait
from .dispatch import Dispatch

_steps, _runs, _waits = StepRun.__table__, Run.__table__, Wait.__table__

#: Statuses of an item still to end (the partial index `ix_steps_items_open`).
ITEM_OPEN = (P.PENDING, P.QUEUED, P.RUNNING, P.RETRYING)


def item_rows(
    rid: uuid.UUID, node: str, items: Sequence[Any], queue: str, max_attempts: int,
    timeout: float | None, limit: int | None, now: datetime, lease: datetime,
) -> tuple[list[dict[str, Any]], list[Dispatch]]:
    """The step rows of a map's items and the messages of those that start at once (the
    first `limit`, or all); the others wait `pending` for a slot."""
    rows: list[dict[str, Any]] = []
    messages: list[Dispatch] = []
    for index, item in enumerate(items):
        row = {
            "run_id": rid, "name": M.item_name(node, index), "status": P.PENDING, "queue": queue,
            "concurrency_key": None, "attempts": 0, "max_attempts": max_attempts, "result": None,
            "error": None, "queued_at": None, "started_at": None, "finished_at": None,
            "lease_expires_at": None, "task_id": None, "reason": None, "handed_back_at": None,
            "map_node": node, "map_index": index, "item": item,
        }
        if limit is None or index < limit:
            message = Dispatch(str(rid), row["name"], queue, timeout)
            row.update(status=P.QUEUED, queued_at=now, lease_expires_at=lease, task_id=message.task_id)
            messages.append(message)
        rows.append(row)
    return rows, messages


_NEXT_PENDING = (
    select(_steps.c.id, _steps.c.name, _steps.c.queue)
    .where(_steps.c.run_id == bindparam("p_rid"), _steps.c.map_node == bindparam("p_node"),
           _steps.c.status == P.PENDING)
    .order_by(_steps.c.map_index)
    .limit(bindparam("p_count"))
    .with_for_update(skip_locked=True)
)
_QUEUE_ITEM = (
    update(_steps)
    .where(_steps.c.id == bindparam("p_id"), _steps.c.status == P.PENDING)
    .values(status=P.QUEUED, queued_at=bindparam("p_now"), lease_expires_at=bindparam("p_lease"),
            task_id=bindparam("p_task"))
)


def promote(session: Session, rid: uuid.UUID, node: str, count: int, timeout: float | None,
            now: datetime, lease: datetime) -> list[Dispatch]:
    """Queue the next `count` pending items of a map (slots freed by items that ended)."""
    if count <= 0:
        return []
    conn = session.connection()
    found = conn.execute(_NEXT_PENDING, {"p_rid": rid, "p_node": node, "p_count": count}).all()
    messages = [Dispatch(str(rid), row.name, row.queue, timeout) for row in found]
    if found:
        conn.execute(_QUEUE_ITEM, [
            {"p_id": row.id, "p_now": now, "p_lease": lease, "p_task": m.task_id}
            for row, m in zip(found, messages, strict=True)
        ])
    return messages


_ANY_OPEN = select(
    exists().where(_steps.c.run_id == bindparam("p_rid"), _steps.c.map_node == bindparam("p_node"),
                   _steps.c.status.in_(ITEM_OPEN))
)


_LAST_ITEM = (
    select(_steps.c.status)
    .where(_steps.c.run_id == bindparam("p_rid"), _steps.c.map_node == bindparam("p_node"))
    .order_by(_steps.c.map_index.desc())
    .limit(1)
)


def items_open(session: Session | Connection, rid: uuid.UUID, node: str) -> bool:
    """Whether any item of a map is still to end.

    The last item first (items start in index order, so it is nearly always among the last
    to end): one probe at the end of `ix_steps_items`. Only once it has ended is the open
    items' partial index searched, whose front fills with the entries of ended items (every
    status change leaves one behind until vacuum): probing it first for each of 10,000 items
    cost a time growing with the number already ended.
    """
    conn = session.connection() if isinstance(session, Session) else session
    params = {"p_rid": rid, "p_node": node}
    if conn.scalar(_LAST_ITEM, params) in ITEM_OPEN:
        return True
    return bool(conn.scalar(_ANY_OPEN, params))


def item_ends(session: Session, rid: uuid.UUID, node: str) -> list[M.ItemEnd]:
    rows = session.execute(
        select(_steps.c.map_index, _steps.c.status, _steps.c.result, _steps.c.error)
        .where(_steps.c.run_id == rid, _steps.c.map_node == node)
        .order_by(_steps.c.map_index)
    ).all()
    return [M.ItemEnd(r.map_index, r.status, r.result, r.error) for r in rows]


def item_progress(session: Session, rid: uuid.UUID) -> dict[str, dict[str, int]]:
    """For each map of a run: how many items are in each status, plus `total`."""
    found: dict[str, dict[str, int]] = {}
    for node, status, count in session.execute(
        select(_steps.c.map_node, _steps.c.status, func.count())
        .where(_steps.c.run_id == rid, _steps.c.map_node.is_not(None))
        .group_by(_steps.c.map_node, _steps.c.status)
    ).all():
        counts = found.setdefault(node, {"total": 0})
        counts[status] = count
        counts["total"] += count
    return found


def cancel_items(session: Session, rids: Sequence[uuid.UUID], nodes: Sequence[str] | None,
                 reason: str, now: datetime) -> list[str]:
    """Cancel the items of maps that will not go on (of `nodes`, or of every map of the
    runs); returns the task ids of the queued ones, to revoke. Running items finish their
    attempt; what they return changes nothing."""
    if not rids:
        return []
    where = [_steps.c.run_id.in_(list(rids)), _steps.c.map_node.is_not(None),
             _steps.c.status.in_((P.PENDING, P.QUEUED, P.RETRYING))]
    if nodes is not None:
        where.append(_steps.c.map_node.in_(list(nodes)))
    revoked = session.execute(
        update(_steps).where(*where)
        .values(status=P.CANCELLED, finished_at=now, lease_expires_at=None, reason=reason)
        .returning(_steps.c.task_id)
    ).scalars().all()
    return [t for t in revoked if t]


def delete_items(session: Session, rid: uuid.UUID, nodes: Iterable[str]) -> None:
    """Drop a map's items (a retry of the run expands it anew)."""
    nodes = list(nodes)
    if nodes:
        session.execute(delete(_steps).where(_steps.c.run_id == rid, _steps.c.map_node.in_(nodes)))


def map_errors(session: Session, rid: uuid.UUID, nodes: Sequence[str]) -> dict[str, dict[int, str]]:
    """The errors of the failed items of maps (`ctx.map_errors`)."""
    found: dict[str, dict[int, str]] = {node: {} for node in nodes}
    for node, index, error in session.execute(
        select(_steps.c.map_node, _steps.c.map_index, _steps.c.error)
        .where(_steps.c.run_id == rid, _steps.c.map_node.in_(list(nodes)),
               _steps.c.status == P.FAILED)
    ).all():
        found[node][index] = error or "failed"
    return found


def stalled_maps(session: Session, limit: int = 500) -> list[tuple[uuid.UUID, str]]:
    """Map nodes still running with no item left to end: a process died between an item's
    commit and the map's settlement (the recovery loop settles them)."""
    nodes = _steps.alias("node")
    items = _steps.alias("items")
    open_item = exists().where(items.c.run_id == nodes.c.run_id, items.c.map_node == nodes.c.name,
                               items.c.status.in_(ITEM_OPEN))
    return [tuple(row) for row in session.execute(  # type: ignore[misc]
        select(nodes.c.run_id, nodes.c.name)
        .where(nodes.c.status == P.RUNNING, nodes.c.attempts == 0, nodes.c.map_node.is_(None),
               ~open_item)
        .limit(limit)
    ).all()]


# -- calls ---------------------------------------------------------------------------------


def call_wait(rid: uuid.UUID, node: str, child: uuid.UUID, workflow: str, now: datetime) -> dict[str, Any]:
    """The `waits` row of a call node waiting for its child run."""
    return {
        "run_id": rid, "step": node, "kind": M.CALL, "status": W.OPEN, "topic": None,
        "paths": None, "correlation": str(child), "spec": {"workflow": workflow, "run_id": str(child)},
        "opened_at": now, "due_at": None, "closed_at": None, "event_id": None,
        "decision": None, "comment": None, "decided_by": None,
    }


def open_call(session: Session, rid: uuid.UUID, node: str, child: uuid.UUID) -> int | None:
    """The id of the open wait of `node` for `child`, or None (it ended, or waits for another)."""
    return session.scalar(
        select(_waits.c.id).where(_waits.c.run_id == rid, _waits.c.step == node,
                                  _waits.c.kind == M.CALL, _waits.c.status == W.OPEN,
                                  _waits.c.correlation == str(child))
    )


def ended_children(session: Session, limit: int = 500) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(parent, child) of call nodes still waiting for a child that has ended: a process
    died between the child's end and the parent's settlement (the recovery loop settles)."""
    found = session.execute(
        select(_waits.c.run_id, _waits.c.correlation)
        .where(_waits.c.status == W.OPEN, _waits.c.kind == M.CALL)
        .order_by(_waits.c.id)
        .limit(limit * 20)  # the oldest open calls first; the next sweep takes the rest
    ).all()
    if not found:
        return []
    children = {uuid.UUID(c): parent for parent, c in found if c}
    ended = session.scalars(
        select(_runs.c.id).where(_runs.c.id.in_(list(children)), _runs.c.status.in_(P.RUN_FINAL))
        .limit(limit)
    ).all()
    return [(children[c], c) for c in ended]


def live_children(session: Session, parents: Sequence[uuid.UUID],
                  nodes: Sequence[str] | None = None) -> list[uuid.UUID]:
    """Children of `parents` (of their `nodes`, if given) that a parent waits for and that
    have not ended: what cancelling the parent, or its node, cancels too."""
    if not parents:
        return []
    where = [_runs.c.parent_run_id.in_(list(parents)), _runs.c.detached.is_not(True),
             _runs.c.status.in_((P.RUN_PENDING, P.RUN_RUNNING))]
    if nodes is not None:
        where.append(_runs.c.parent_step.in_(list(nodes)))
    return list(session.scalars(select(_runs.c.id).where(*where)).all())


def orphaned_children(session: Session, limit: int = 500) -> list[uuid.UUID]:
    """Live children whose parent's call node no longer waits (the parent was cancelled or
    failed, or the node was): the recovery loop cancels them, should the parent's own
    transaction not have."""
    node = _steps.alias("node")
    return list(session.scalars(
        select(_runs.c.id)
        .join(node, and_(node.c.run_id == _runs.c.parent_run_id, node.c.name == _runs.c.parent_step))
        .where(_runs.c.parent_run_id.is_not(None), _runs.c.detached.is_not(True),
               _runs.c.status.in_((P.RUN_PENDING, P.RUN_RUNNING)), node.c.status != P.WAITING)
        .limit(limit)
    ).all())


def child_link(session: Session, rid: uuid.UUID) -> Any:
    """(parent_run_id, parent_step, detached) of a run."""
    return session.execute(
        select(_runs.c.parent_run_id, _runs.c.parent_step, _runs.c.detached).where(_runs.c.id == rid)
    ).one_or_none()
