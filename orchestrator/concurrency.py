"""Concurrency limits on distributed locks: who may run now, and who is next.

A limit is enforced under a PostgreSQL transaction-level advisory lock on its scope and key
(`pg_advisory_xact_lock`), held by whichever node is deciding, on whichever host: admitting a
run, parking or waking a step. The lock ends with the transaction, so a node that dies
releases it at once; a *slot* is the running run (or step) itself, which a dead worker gives
back through the step lease and the recovery loop. On SQLite (dev mode) writers are already
serialised, so the lock is a no-op.

Lock order, everywhere: a concurrency key first, then run rows. Every path that changes a
limited run's status takes its key lock before its run lock, so no two transactions can
wait on each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from . import planner as P
from .db.models import Run, StepRun

if TYPE_CHECKING:
    from .dsl import Workflow

_runs, _steps = Run.__table__, StepRun.__table__

#: Reason recorded on a run cancelled by `cancel_newest`.
CANCELLED_NEWEST = "cancelled: concurrency limit {limit} reached for key {key!r} (strategy cancel_newest)"
#: Reason recorded on a run cancelled by `cancel_in_progress`.
CANCELLED_IN_PROGRESS = "cancelled: a newer run with key {key!r} took its place (strategy cancel_in_progress)"


def lock_key(session: Session, scope: str, key: str) -> None:
    """Hold the distributed lock of (scope, key) until this transaction ends."""
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:lock, 0))"),
        {"lock": f"{scope}\x1f{key}"},
    )


def lock_keys_of_runs(session: Session, run_ids: Sequence[uuid.UUID]) -> list[tuple[str, str]]:
    """Take the locks of these runs' concurrency keys, sorted: the first half of the lock
    order of a transaction that locks several runs (their rows by id come next). Returns
    the (workflow, key) pairs locked."""
    keys = sorted(
        session.execute(
            select(Run.workflow, Run.concurrency_key)
            .where(Run.id.in_(list(run_ids)), Run.concurrency_key.is_not(None))
            .distinct()
        ).all()
    )
    for workflow, key in keys:
        lock_key(session, run_scope(workflow), key)
    return [(workflow, key) for workflow, key in keys]


def run_scope(workflow: str) -> str:
    return f"run:{workflow}"


def step_scope(workflow: str, step: str) -> str:
    return f"step:{workflow}:{step}"


def runs_of_key(
    session: Session, workflow: str, key: str, status: str, limit: int | None = None
) -> list[Any]:
    """Runs of a key in one status, oldest first (creation order is event order).

    With `limit`, only the oldest `limit`: an index range scan (`ix_runs_concurrency`, and
    `ix_runs_pending` for pending runs), whatever the backlog.
    """
    query = (
        select(_runs.c.id, _runs.c.created_at)
        .where(
            _runs.c.workflow == workflow,
            _runs.c.concurrency_key == key,
            _runs.c.status == status,
        )
        .order_by(_runs.c.created_at, _runs.c.event_id, _runs.c.id)
    )
    if limit is not None:
        query = query.limit(limit)
    return list(session.execute(query))


def pending_to_decide(session: Session, workflow: str, key: str, strategy: str, free: int) -> list[Any]:
    """The pending runs of a key that `choose` needs, oldest first.

    `queue` only admits, so it reads the oldest `free` and nothing when the key is full:
    a backlog of any size costs one index probe. The cancelling strategies admit or cancel
    *every* pending run in the same admission, so they read them all; their backlog never
    outlives one admission (at most what one transaction inserted, e.g. a consumer batch).
    """
    if strategy == "queue":
        return runs_of_key(session, workflow, key, P.RUN_PENDING, limit=free) if free > 0 else []
    return runs_of_key(session, workflow, key, P.RUN_PENDING)


def choose(
    strategy: str, limit: int, running: Sequence[Any], pending: Sequence[Any]
) -> tuple[list[Any], list[Any], list[Any]]:
    """Pure: (runs to admit, pending runs to cancel, running runs to cancel), oldest first in."""
    free = max(0, limit - len(running))
    if strategy == "queue":
        return list(pending[:free]), [], []
    if strategy == "cancel_newest":
        return list(pending[:free]), list(pending[free:]), []
    # cancel_in_progress: the newest runs win, up to the limit; older ones make room.
    winners = list(pending[-limit:]) if pending else []
    losers = list(pending[: len(pending) - len(winners)])
    evict = max(0, len(running) + len(winners) - limit)
    return winners, losers, list(running[:evict])


def count_running_steps(session: Session, workflow: str, step: str, key: str, limit: int) -> int:
    """Running steps of a key, counted up to `limit` (all a slot check needs to know)."""
    running = (
        select(_steps.c.id)
        .select_from(_steps.join(_runs, _runs.c.id == _steps.c.run_id))
        .where(
            _runs.c.workflow == workflow,
            _steps.c.name == step,
            _steps.c.concurrency_key == key,
            _steps.c.status == P.RUNNING,
        )
        .limit(limit)
        .subquery()
    )
    return session.scalar(select(func.count()).select_from(running)) or 0


def parked_steps(session: Session, workflow: str, step: str, key: str, limit: int) -> list[Any]:
    """Steps waiting for a slot (queued with no message in flight), oldest first.

    The oldest `limit` only, from the partial index `ix_steps_parked`.
    """
    return list(
        session.execute(
            select(_steps.c.id, _steps.c.run_id, _steps.c.queue)
            .select_from(_steps.join(_runs, _runs.c.id == _steps.c.run_id))
            .where(
                _runs.c.workflow == workflow,
                _steps.c.name == step,
                _steps.c.concurrency_key == key,
                _steps.c.status == P.QUEUED,
                _steps.c.task_id.is_(None),
            )
            .order_by(_steps.c.queued_at, _steps.c.id)
            .limit(limit)
            .with_for_update(of=_steps, skip_locked=True)
        )
    )


def park_step(session: Session, step_id: int, now: datetime, retry_at: datetime) -> None:
    """Leave a step queued with no message: a finishing sibling (or recovery) wakes it."""
    session.execute(
        update(_steps)
        .where(_steps.c.id == step_id)
        .values(status=P.QUEUED, task_id=None, lease_expires_at=retry_at)
    )


# Keys with pending runs by a loose index scan of `ix_runs_pending` (one probe per key, not one
# row per pending run), keeping those with a free slot (running runs counted up to the limit).
_KEYS_WAITING = text(
    """
WITH RECURSIVE waiting(k) AS (
    SELECT min(concurrency_key) FROM runs
     WHERE workflow = :workflow AND status = 'pending' AND concurrency_key IS NOT NULL
    UNION ALL
    SELECT (SELECT min(concurrency_key) FROM runs
             WHERE workflow = :workflow AND status = 'pending' AND concurrency_key > waiting.k)
      FROM waiting WHERE waiting.k IS NOT NULL
)
SELECT k FROM waiting
 WHERE k IS NOT NULL
   AND (SELECT count(*) FROM (SELECT 1 FROM runs
                               WHERE workflow = :workflow AND concurrency_key = waiting.k
                                 AND status = 'running' LIMIT :slots) AS held) < :slots
 LIMIT :limit
"""
)


def workflow_keys_waiting(session: Session, workflow: Workflow, limit: int = 100) -> list[str]:
    """Keys of a limited workflow with pending runs and a free slot (for the recovery sweep).

    Only keys with a free slot, so a key left waiting (a crash between a slot's release and
    the admission it should have run) is found however many keys are busy with a backlog.
    """
    slots = workflow.concurrency.limit if workflow.concurrency is not None else 1
    return list(
        session.scalars(_KEYS_WAITING, {"workflow": workflow.name, "slots": slots, "limit": limit})
    )


def as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
