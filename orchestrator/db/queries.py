"""Read-side queries and the JSON shape of runs, steps and attempts (CLI and API share it)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exists, select, tuple_
from sqlalchemy.orm import Session, selectinload

from .. import composition as M
from .. import planner as P
from ..errors import EventNotFound, RunNotFound
from .models import Attempt, Event, Run, StepRun, Wait

#: The runs-list filter `waiting`: live runs (pending or running) with a node waiting.
WAITING = P.WAITING
#: Statuses a runs list can filter by: every run status, and `waiting`.
LIST_STATUSES = (*P.RUN_STATUSES, WAITING)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 with time zone; SQLite returns naive datetimes that were written in UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def attempt_dict(attempt: Attempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "status": attempt.status,
        "worker": attempt.worker,
        "started_at": iso(attempt.started_at),
        "finished_at": iso(attempt.finished_at),
        "error": attempt.error,
        "traceback": attempt.traceback,
        "logs": attempt.logs or [],
    }


def wait_dict(wait: Wait) -> dict[str, Any]:
    """What a node waits (or waited) for, and how it ended: a decision, an event, a timer."""
    spec = wait.spec or {}
    return {
        "kind": wait.kind,
        "status": wait.status,
        "topic": wait.topic,
        "match": spec.get("match"),
        "correlate": spec.get("correlate") if isinstance(spec.get("correlate"), dict) else None,
        "timeout": spec.get("timeout"),
        "on_timeout": spec.get("on_timeout"),
        "lookback": spec.get("lookback"),
        "duration": spec.get("duration"),
        "opened_at": iso(wait.opened_at),
        "due_at": iso(wait.due_at),
        "closed_at": iso(wait.closed_at),
        "event_id": wait.event_id,
        "decision": wait.decision,
        "comment": wait.comment,
        "decided_by": wait.decided_by,
    }


def waits_of_run(session: Session, run_id: uuid.UUID) -> dict[str, Wait]:
    """Each node's latest wait (a retry opens a new one; the older ones are history)."""
    return waits_of_runs(session, [run_id])[run_id]


def waits_of_runs(session: Session, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Wait]]:
    """`waits_of_run` for several runs in one query (`ix_waits_run`)."""
    found: dict[uuid.UUID, dict[str, Wait]] = {run_id: {} for run_id in run_ids}
    if run_ids:
        for wait in session.scalars(select(Wait).where(Wait.run_id.in_(run_ids)).order_by(Wait.id)):
            found[wait.run_id][wait.step] = wait
    return found


def step_dict(
    step: StepRun,
    with_attempts: bool = True,
    wait: Wait | None = None,
    progress: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A step (a node of its run); `progress` is a map node's item counts
    (`composed.map_summary`); a call node names the child run of its latest wait."""
    data: dict[str, Any] = {
        "name": step.name,
        "status": step.status,
        "queue": step.queue,
        "result": step.result,
        "error": step.error,
        "attempt_count": step.attempts,
        "queued_at": iso(step.queued_at),
        "started_at": iso(step.started_at),
        "finished_at": iso(step.finished_at),
        "wait": wait_dict(wait) if wait is not None else None,
        "map": progress,
        "child_run_id": wait.correlation if wait is not None and wait.kind == M.CALL else None,
    }
    if with_attempts:
        data["attempts"] = [attempt_dict(a) for a in step.attempt_rows]
    return data


def event_ref(event: Event | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {
        "id": event.id,
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "key": event.key,
    }


def run_dict(
    run: Run,
    with_steps: bool = True,
    waits: dict[str, Wait] | None = None,
    maps: dict[str, dict[str, int]] | None = None,
    children: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A run; with its steps, each with its latest wait from `waits` (`waits_of_run`) and,
    for a map, its progress from `maps`; with `children` when given (`composed.run_detail`
    gathers all of them)."""
    data: dict[str, Any] = {
        "id": str(run.id),
        "workflow": run.workflow,
        "version": run.version,
        "status": run.status,
        "input": run.input,
        "error": run.error,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "event_id": run.event_id,
        # Who started it: a parent's call node, or a parent's step (`ctx.start_run`: detached).
        "parent_run_id": str(run.parent_run_id) if run.parent_run_id is not None else None,
        "parent_step": run.parent_step,
        "detached": bool(run.detached),
        "output": run.output,
    }
    if with_steps:
        data["steps"] = [
            step_dict(s, wait=(waits or {}).get(s.name), progress=(maps or {}).get(s.name)) for s in run.steps
        ]
    if children is not None:
        data["children"] = children
    return data


def get_run(session: Session, run_id: str | uuid.UUID) -> Run:
    try:
        rid = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
    except ValueError:
        raise RunNotFound(f"no run {run_id!r}: run ids are UUIDs") from None
    run = session.scalars(
        select(Run)
        .where(Run.id == rid)
        .options(
            selectinload(Run.steps).selectinload(StepRun.attempt_rows),
            selectinload(Run.event),
        )
    ).one_or_none()
    if run is None:
        raise RunNotFound(f"no run {run_id}")
    return run


def list_runs(
    session: Session,
    *,
    workflow: str | None = None,
    status: str | None = None,
    version: str | None = None,
    since: datetime | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
    limit: int = 50,
    with_steps: bool = False,
) -> list[Run]:
    """Runs newest first; `before` is a keyset cursor (created_at, id), never an OFFSET.

    `status="waiting"` selects the live runs with a node waiting (`ix_steps_waiting`); a
    run whose first node waits is still `pending` (no step has been claimed), later ones
    are `running`.
    """
    query = select(Run)
    if workflow:
        query = query.where(Run.workflow == workflow)
    if version:
        query = query.where(Run.version == version)
    if status == WAITING:
        query = query.where(
            Run.status.in_((P.RUN_PENDING, P.RUN_RUNNING)),
            exists().where(StepRun.run_id == Run.id, StepRun.status == P.WAITING),
        )
    elif status:
        query = query.where(Run.status == status)
    if since is not None:
        query = query.where(Run.created_at >= since)
    if before is not None:
        # A row-value comparison, so the index range starts at the cursor (an OR of the two
        # conditions would make PostgreSQL walk the index from the newest run every time).
        query = query.where(tuple_(Run.created_at, Run.id) < tuple(before))
    query = query.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit)
    if with_steps:
        query = query.options(selectinload(Run.steps).selectinload(StepRun.attempt_rows))
    return list(session.scalars(query))


def run_ids_matching(
    session: Session,
    *,
    workflow: str | None = None,
    statuses: tuple[str, ...] = (),
    version: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
) -> list[uuid.UUID]:
    """Ids of runs matching a filter, newest first, at most `limit` (for bulk actions)."""
    query = select(Run.id)
    if workflow:
        query = query.where(Run.workflow == workflow)
    if version:
        query = query.where(Run.version == version)
    if statuses:
        query = query.where(Run.status.in_(statuses))
    if since is not None:
        query = query.where(Run.created_at >= since)
    query = query.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit)
    return list(session.scalars(query))


# -- events ---------------------------------------------------------------------------


def event_dict(
    event: Event, runs: list[dict[str, Any]] | None = None, waits: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """An event as the API shows it, with the runs it started and the waiting nodes it
    completed; `raw` is the message value decoded as UTF-8 (lossy)."""
    return {
        "id": event.id,
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "key": event.key,
        "headers": event.headers or [],
        "payload": event.payload,
        "raw": event.raw.decode("utf-8", errors="replace") if event.raw is not None else None,
        "kafka_timestamp": iso(event.kafka_timestamp),
        "received_at": iso(event.received_at),
        "outcome": event.outcome,
        "reason": event.reason,
        "runs": runs if runs is not None else [],
        "waits": waits if waits is not None else [],
    }


def get_event(session: Session, event_id: int) -> Event:
    event = session.get(Event, event_id)
    if event is None:
        raise EventNotFound(f"no event {event_id}")
    return event


def list_events(
    session: Session,
    *,
    topic: str | None = None,
    outcome: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[Event]:
    """Events newest first; `before` is a keyset cursor (an event id), never an OFFSET."""
    query = select(Event)
    if topic:
        query = query.where(Event.topic == topic)
    if outcome:
        query = query.where(Event.outcome == outcome)
    if before is not None:
        query = query.where(Event.id < before)
    return list(session.scalars(query.order_by(Event.id.desc()).limit(limit)))


def runs_of_events(session: Session, event_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The runs each event started (lineage), as short references, by event id."""
    found: dict[int, list[dict[str, Any]]] = {event_id: [] for event_id in event_ids}
    if not event_ids:
        return found
    rows = session.execute(
        select(Run.event_id, Run.id, Run.workflow, Run.status, Run.created_at)
        .where(Run.event_id.in_(event_ids))
        .order_by(Run.created_at, Run.id)
    )
    for event_id, run_id, workflow, status, created_at in rows:
        found[event_id].append(
            {"id": str(run_id), "workflow": workflow, "status": status, "created_at": iso(created_at)}
        )
    return found



def waits_of_events(session: Session, event_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The waiting nodes each event completed, as (run, step) references, by event id."""
    found: dict[int, list[dict[str, Any]]] = {event_id: [] for event_id in event_ids}
    if not event_ids:
        return found
    rows = session.execute(
        select(Wait.event_id, Wait.run_id, Wait.step, Run.workflow, Run.status)
        .join(Run, Run.id == Wait.run_id)
        .where(Wait.event_id.in_(event_ids))
        .order_by(Wait.id)
    )
    for event_id, run_id, step, workflow, status in rows:
        found[event_id].append({"run_id": str(run_id), "step": step, "workflow": workflow, "status": status})
    return found
