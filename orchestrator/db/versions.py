"""Queries on workflow versions: store a version's structure once, read it back, and
tell which versions are deployed and which still have live runs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .. import planner as P
from ..dsl import Workflow
from ..versions import structure
from .inserts import insert_ignoring_conflicts
from .models import Run, WorkflowVersion

_versions = WorkflowVersion.__table__


def record(session: Session, workflows: Iterable[Workflow], now: datetime, *, seen: bool = True) -> None:
    """Store each workflow's current structure under its version (once), and, with `seen`,
    note that a process with that code is up now."""
    rows = [
        {"workflow": w.name, "version": w.version, "structure": structure(w), "created_at": now,
         "last_seen_at": now if seen else None}
        for w in workflows
    ]
    if not rows:
        return
    insert_ignoring_conflicts(session, _versions, rows, conflict_columns=("workflow", "version"))
    if seen:
        for row in rows:
            session.execute(
                update(_versions)
                .where(_versions.c.workflow == row["workflow"], _versions.c.version == row["version"])
                .values(last_seen_at=now)
            )


def structure_of(session: Session, workflow: str, version: str) -> dict[str, Any] | None:
    """The stored structure of one version, or None if it was never recorded."""
    return session.scalar(
        select(_versions.c.structure).where(_versions.c.workflow == workflow, _versions.c.version == version)
    )


@dataclass
class VersionInfo:
    workflow: str
    version: str
    created_at: datetime | None
    last_seen_at: datetime | None
    #: Runs of this version that are pending or running.
    active_runs: int = 0


def overview(session: Session, workflows: Sequence[str] | None = None) -> list[VersionInfo]:
    """Every recorded version (of `workflows`, or of all), with its count of live runs.

    Versions of runs recorded before versions existed (NULL) are left out."""
    active = (
        select(Run.workflow, Run.version, func.count().label("n"))
        .where(Run.status.in_((P.RUN_PENDING, P.RUN_RUNNING)), Run.version.is_not(None))
        .group_by(Run.workflow, Run.version)
    )
    if workflows is not None:
        active = active.where(Run.workflow.in_(list(workflows)))
    counts = {(r.workflow, r.version): r.n for r in session.execute(active)}
    query = select(_versions.c.workflow, _versions.c.version, _versions.c.created_at,
                   _versions.c.last_seen_at).order_by(_versions.c.workflow, _versions.c.created_at)
    if workflows is not None:
        query = query.where(_versions.c.workflow.in_(list(workflows)))
    out = [VersionInfo(r.workflow, r.version, r.created_at, r.last_seen_at,
                       counts.pop((r.workflow, r.version), 0))
           for r in session.execute(query)]
    # Live runs of a version whose structure row is missing (it should not happen): shown too.
    out.extend(VersionInfo(w, v, None, None, n) for (w, v), n in sorted(counts.items()))
    return out


def active_workflows(session: Session) -> dict[str, int]:
    """Workflow name -> number of pending or running runs (any version)."""
    return dict(
        session.execute(
            select(Run.workflow, func.count())
            .where(Run.status.in_((P.RUN_PENDING, P.RUN_RUNNING)))
            .group_by(Run.workflow)
        ).all()
    )
