"""Debounce and batch windows in the database: events join them in the consumer's
transaction (`absorb`), and closers start their runs (`close_due`).

Exactly once: an event joins a window in the transaction that records it, and
`window_events` has one row per (event, workflow), so a redelivered event (already recorded)
joins nothing again, and an event never sits in two windows. A window is closed (its run
inserted, `closed_at` and `run_id` set) in one transaction that holds the window's row lock,
taken with `FOR UPDATE SKIP LOCKED`: of two closers (the recovery process's sweep, the
consumer's loop) only one closes a window. The consumer takes a (workflow, key) advisory
lock before looking for the key's open window, so two consumers never open two; a window
a closer closed meanwhile is no longer open, and the event opens the key's next one.

Lock order: window keys (sorted), window rows, then the runs' concurrency keys (inserting
runs), which is also the closer's order, so consumers and closers never deadlock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from .. import clock
from .. import concurrency as C
from ..intake import Decision, describe_error
from ..windows import BATCH, Batch, Debounce, extended, first_closes_at, run_input
from .inserts import insert_all
from .models import WindowEvent, WindowState

if TYPE_CHECKING:
    from ..dispatch import Dispatch
    from ..engine import PlannedRun, WorkflowEngine

log = logging.getLogger("orchestrator.windows")

#: Windows closed per transaction by one pass of `close_due`.
CLOSE_BATCH = 100
_windows = WindowState.__table__
_members = WindowEvent.__table__


@dataclass(frozen=True)
class Joining:
    """A recorded event joining a window of one workflow."""

    event_id: int
    decision: Decision


def _scope(workflow: str) -> str:
    return f"window:{workflow}"


def absorb(
    engine: WorkflowEngine, session: Session, outbox: list[Dispatch], joining: Iterable[Joining],
    now: datetime,
) -> list[str]:
    """Add recorded events to their windows (opening them as needed), in the caller's
    transaction; batches that fill up start their runs at once. Returns those runs' ids."""
    groups: dict[tuple[str, str], list[Joining]] = {}
    for j in joining:
        groups.setdefault((j.decision.workflow, j.decision.window_key or ""), []).append(j)
    full: list[int] = []
    for (workflow, key), items in sorted(groups.items()):
        C.lock_key(session, _scope(workflow), key)
        spec = items[0].decision.window
        window = session.execute(
            select(_windows).where(_windows.c.workflow == workflow, _windows.c.key == key,
                                   _windows.c.closed_at.is_(None)).with_for_update()
        ).one_or_none()
        window_id, size, opened_at = (window.id, window.size, _aware(window.opened_at)) if window else (None, 0, now)
        members: list[dict[str, Any]] = []
        for j in sorted(items, key=lambda j: j.event_id):
            if window_id is None:
                window_id = session.execute(insert(_windows).values(
                    workflow=workflow, kind=spec.kind, key=key, opened_at=now,
                    closes_at=first_closes_at(spec, now), size=0,
                ).returning(_windows.c.id)).scalar_one()
                size, opened_at = 0, now
            members.append({"event_id": j.event_id, "workflow": workflow, "window_id": window_id,
                            "input": j.decision.input or {}, "dedupe_key": j.decision.dedupe_key})
            size += 1
            if isinstance(spec, Batch) and size >= spec.max_size:
                # Closed at once (its run starts below, in this transaction), so the key's
                # next event may open the next window: only one window of a key is open.
                _set_size(session, window_id, size, None, closed_at=now)
                full.append(window_id)
                window_id = None
        if window_id is not None:
            closes = extended(spec, opened_at, now) if isinstance(spec, Debounce) else None
            _set_size(session, window_id, size, closes)
        insert_all(session, _members, members)
    if not full:
        return []
    rows = session.execute(select(_windows).where(_windows.c.id.in_(full)).order_by(_windows.c.id)).all()
    return _close(engine, session, outbox, rows, now)


def _set_size(session: Session, window_id: int, size: int, closes_at: datetime | None,
              closed_at: datetime | None = None) -> None:
    values: dict[str, Any] = {"size": size}
    if closes_at is not None:
        values["closes_at"] = closes_at
    if closed_at is not None:
        values["closed_at"] = closed_at
    session.execute(update(_windows).where(_windows.c.id == window_id).values(**values))


def close_due(engine: WorkflowEngine, now: datetime | None = None, limit: int = CLOSE_BATCH) -> list[str]:
    """Close the due windows of the loaded workflows (up to `limit`), starting their runs;
    windows another closer holds are skipped. Returns the ids of the runs started."""
    names = [w.name for w in engine.registry if any(getattr(t, "window", None) for t in w.triggers)]
    if not names:
        return []
    now = now or clock.now()
    engine.record_versions()
    with engine.transaction() as (session, outbox):
        rows = session.execute(
            select(_windows)
            .where(_windows.c.closed_at.is_(None), _windows.c.closes_at <= now,
                   _windows.c.workflow.in_(names))
            .order_by(_windows.c.closes_at, _windows.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if not rows:
            return []
        return _close(engine, session, outbox, rows, now)


def _close(
    engine: WorkflowEngine, session: Session, outbox: list[Dispatch], rows: Sequence[Any], now: datetime
) -> list[str]:
    """Start the runs of locked windows (open, or full and just closed by `absorb`) and mark
    them closed (caller's transaction)."""
    from ..events import insert_runs

    ids = [r.id for r in rows]
    found = session.execute(
        select(_members.c.window_id, _members.c.event_id, _members.c.input, _members.c.dedupe_key)
        .where(_members.c.window_id.in_(ids)).order_by(_members.c.window_id, _members.c.event_id)
    ).all()
    members: dict[int, list[Any]] = {}
    for m in found:
        members.setdefault(m.window_id, []).append(m)
    plans: list[tuple[Any, PlannedRun | None, str | None]] = []
    for row in rows:
        events = members.get(row.id, [])
        if not events:  # its events were deleted (retention): nothing to start
            plans.append((row, None, "its events were deleted before it closed"))
            continue
        plans.append((row, *_plan(engine, row, events)))
    planned = [p for _, p, _ in plans if p is not None]
    started = set(insert_runs(engine, session, outbox, planned))
    for row, p, error in plans:
        run_id = p.run["id"] if p is not None and str(p.run["id"]) in started else None
        if p is not None and run_id is None:
            error = f"a run of {row.workflow!r} with dedupe key {p.run['dedupe_key']!r} exists already"
        if error:
            log.warning("%s window %s of workflow %r (key %r) closed without a run: %s",
                        row.kind, row.id, row.workflow, row.key, error)
        session.execute(update(_windows).where(_windows.c.id == row.id).values(
            closed_at=now, run_id=run_id, error=error))
    return sorted(started)


def _plan(engine: WorkflowEngine, row: Any, events: list[Any]) -> tuple[PlannedRun | None, str | None]:
    workflow = engine.registry.get(row.workflow)
    spec = next(t.window for t in workflow.triggers if getattr(t, "window", None) is not None
                and t.window.kind == row.kind)
    data = run_input(spec, [(e.event_id, e.input) for e in events])
    dedupe = None if row.kind == BATCH else events[-1].dedupe_key
    try:
        planned = engine.plan_run(workflow, data, dedupe_key=dedupe)
    except Exception as exc:  # noqa: BLE001 - one window's failure must not stop the others
        return None, describe_error(exc, "could not plan its run: ")
    planned.run["event_id"] = events[-1].event_id
    return planned, None


def window_of_event(session: Session, event_id: int, workflow: str) -> Any:
    """The window an event joined for a workflow (a `windows` row), or None."""
    return session.execute(
        select(_windows).join(_members, _members.c.window_id == _windows.c.id)
        .where(_members.c.event_id == event_id, _members.c.workflow == workflow)
    ).one_or_none()


def windows_of_event(session: Session, event_id: int) -> list[dict[str, Any]]:
    """Each window an event joined: its workflow, kind, state, closing time and run."""
    found = session.execute(
        select(_windows).join(_members, _members.c.window_id == _windows.c.id)
        .where(_members.c.event_id == event_id).order_by(_windows.c.workflow)
    ).all()
    return [describe(r) for r in found]


def describe(row: Any) -> dict[str, Any]:
    return {
        "window_id": row.id, "workflow": row.workflow, "kind": row.kind, "key": row.key,
        "size": row.size, "open": row.closed_at is None,
        "closes_at": _aware(row.closes_at).isoformat(),
        "closed_at": None if row.closed_at is None else _aware(row.closed_at).isoformat(),
        "run_id": None if row.run_id is None else str(row.run_id), "error": row.error,
    }


def events_of_run(session: Session, run_id: Any) -> list[int]:
    """The ids of the events a run's window absorbed (empty for other runs)."""
    return list(session.scalars(
        select(_members.c.event_id).join(_windows, _members.c.window_id == _windows.c.id)
        .where(_windows.c.run_id == run_id).order_by(_members.c.event_id)
    ))


def _aware(moment: datetime) -> datetime:
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
