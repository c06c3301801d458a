"""Queries on workflow versions: store a version's structure once, read it back, and
tell which versions are deployed and which still have live runs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.orm import Session

from .. import planner as P
from ..dsl import Workflow
from ..versions import diff, structure
from .inserts import insert_ignoring_conflicts
from .models import Run, WorkflowVersion
from .queries import iso

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
    if seen:  # the rows already recorded: one statement for them all
        session.execute(
            update(_versions)
            .where(tuple_(_versions.c.workflow, _versions.c.version).in_(
                [(row["workflow"], row["version"]) for row in rows]))
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

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape the CLI and the API share."""
        return {"version": self.version, "active_runs": self.active_runs,
                "created_at": iso(self.created_at), "last_seen_at": iso(self.last_seen_at)}


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


@dataclass
class WorkflowVersions:
    """One workflow as a deploy sees it: the version the loaded code has (None: a deploy
    removed the workflow), its recorded versions with their live runs, and its live runs
    of any version (runs from before versions included)."""

    workflow: str
    current: str | None
    versions: list[VersionInfo]
    active_runs: int

    @property
    def loaded(self) -> bool:
        return self.current is not None

    @property
    def live(self) -> list[VersionInfo]:
        """The versions that still have pending or running runs."""
        return [v for v in self.versions if v.active_runs]


def by_workflow(session: Session, loaded: Iterable[Workflow]) -> list[WorkflowVersions]:
    """Each loaded workflow, then each workflow the loaded code lacks that still has live
    runs (a deploy removed it while they ran), by name."""
    current = {w.name: w.version for w in loaded}
    active = active_workflows(session)
    names = sorted(current) + sorted(set(active) - set(current))
    grouped: dict[str, list[VersionInfo]] = {name: [] for name in names}
    for info in overview(session, names):
        grouped[info.workflow].append(info)
    return [WorkflowVersions(n, current.get(n), grouped[n], active.get(n, 0)) for n in names]


def not_loaded(session: Session, loaded: Iterable[Workflow]) -> list[WorkflowVersions]:
    """The workflows with live runs that the loaded code does not define."""
    return [w for w in by_workflow(session, loaded) if not w.loaded]


@dataclass
class RunVersion:
    """A run's version beside the loaded code's: what the run page and the API show."""

    version: str | None
    #: The loaded workflow's version; None when the workflow is not loaded.
    current: str | None
    #: The run's version's structure (None: unknown) and the loaded one's (None: not loaded).
    structure: dict[str, Any] | None
    current_structure: dict[str, Any] | None

    @property
    def differs(self) -> bool:
        return self.current is not None and self.version != self.current

    @property
    def diff(self) -> dict[str, Any] | None:
        """`versions.diff` from the run's structure to the current one, when the versions
        differ and both structures are known."""
        if not self.differs or self.structure is None or self.current_structure is None:
            return None
        return diff(self.structure, self.current_structure)


def of_run(session: Session, workflow: str, version: str | None, loaded: Workflow | None) -> RunVersion:
    """Compare a run's version (of `workflow`) with `loaded`, the workflow the code has."""
    current = structure(loaded) if loaded is not None else None
    shape = structure_of(session, workflow, version) if version is not None else None
    if shape is None and loaded is not None and version == loaded.version:
        shape = current  # not recorded (yet), but the loaded code has that version
    return RunVersion(version, loaded.version if loaded is not None else None, shape, current)
