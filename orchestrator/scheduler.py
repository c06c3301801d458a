"""The scheduler: starts the runs of cron schedules, and pauses and resumes them.

`fire_due` is one pass over every loaded schedule. The recovery process calls it about
every second (`INTERVAL`) under the sweeper's advisory lock (`recovery.fire_schedules`),
so one node schedules at a time and another takes over when it dies. Exactly one run per
(workflow, schedule, tick) does not rest on that lock: each run carries the dedupe key
`schedule:<id>:<tick>` and is inserted with the conflict-ignoring insert of the Kafka intake
(`events.insert_runs`) against `runs (workflow, dedupe_key)`, so two passes at once (two
schedulers, a pass retried after a crash) start it once.

The `schedules` table keeps per schedule: paused, since when it is active (first seen or
last resumed: no older tick fires, so resuming does not fire the ticks missed while paused),
the newest tick handled, the next fire time, the last run and the last error. An input
function that raises (or returns no dict), or an input the workflow's schema refuses, does
not start a run: that tick is handled, its error is the schedule's `last_error` (shown by
`orchestrator schedules`, the API and the workflow page), and the other schedules go on.
Missed ticks `catchup="all"` drops beyond `max_catchup` are said there too; those `latest`
and `none` skip by design are only logged.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from . import clock
from .db.inserts import insert_ignoring_conflicts
from .db.models import ScheduleState
from .errors import ScheduleNotFound
from .schedules import Schedule, schedules_of

if TYPE_CHECKING:
    from .engine import PlannedRun, WorkflowEngine
    from .registry import Registry

log = logging.getLogger("orchestrator.scheduler")

#: Seconds between two passes of the recovery process's scheduler (`recovery.fire_schedules`).
INTERVAL = 1.0
#: Longest `last_error` kept (the column is text; the dashboard shows it whole).
MAX_ERROR = 2000
_CONNECTION_ERRORS = (OperationalError, InterfaceError, DisconnectionError)
_table = ScheduleState.__table__


@dataclass
class PassResult:
    """What one pass did: runs started, and ticks whose run another pass had started."""

    started: list[str]
    duplicates: int = 0
    errors: int = 0


def loaded(registry: Registry) -> list[Schedule]:
    """Every schedule of the loaded workflows."""
    return [s for workflow in registry for s in schedules_of(workflow)]


def ensure_rows(session: Session, schedules: Iterable[Schedule], now: datetime) -> None:
    """Give each schedule its row (active from `now`) if it has none yet."""
    rows = [
        {"workflow": s.workflow, "schedule_id": s.id, "cron": s.cron, "timezone": s.timezone,
         "paused": False, "active_since": now, "last_tick": None, "next_fire_at": _utc(s.next_after(now)),
         "last_run_id": None, "last_error": None, "updated_at": now}
        for s in schedules
    ]
    insert_ignoring_conflicts(session, _table, rows, conflict_columns=("workflow", "schedule_id"))


def _rows(session: Session, schedules: list[Schedule]) -> dict[tuple[str, str], Any]:
    names = sorted({s.workflow for s in schedules})
    found = session.execute(select(_table).where(_table.c.workflow.in_(names))).all()
    return {(r.workflow, r.schedule_id): r for r in found}


def fire_due(engine: WorkflowEngine, now: datetime | None = None) -> PassResult:
    """One pass: start a run for each due tick of each loaded, unpaused schedule.

    Each schedule is its own failure domain: an error is logged and recorded on its row,
    and the pass goes on; only a lost database connection ends it.
    """
    schedules = loaded(engine.registry)
    result = PassResult(started=[])
    if not schedules:
        return result
    now = now or clock.now()
    with engine.sessions() as session:
        rows = _rows(session, schedules)
    missing = [s for s in schedules if (s.workflow, s.id) not in rows]
    if missing:
        with engine.sessions() as session, session.begin():
            ensure_rows(session, missing, now)
            rows = _rows(session, schedules)
    for sched in schedules:
        row = rows.get((sched.workflow, sched.id))
        if row is None or row.paused:
            continue
        try:
            _fire_one(engine, sched, row, now, result)
        except _CONNECTION_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad schedule must not stop the others
            log.exception("scheduler: schedule %r of %s failed", sched.cron, sched.workflow)
            result.errors += 1
            _record_error(engine, sched, f"the scheduler failed: {type(exc).__name__}: {exc}", now)
    return result


def _fire_one(engine: WorkflowEngine, sched: Schedule, row: Any, now: datetime, result: PassResult) -> None:
    from .engine import validate_input

    start = max(_utc(m) for m in (row.active_since, row.last_tick) if m is not None)
    plan = sched.plan(start, now)
    if plan.newest is None:
        if row.next_fire_at is None or _utc(row.next_fire_at) != _utc(plan.next_fire):
            with engine.sessions() as session, session.begin():
                session.execute(update(_table).where(*_key(sched)).values(
                    next_fire_at=_utc(plan.next_fire), updated_at=now))
        return
    workflow = engine.registry.get(sched.workflow)
    planned: list[PlannedRun] = []
    errors: list[str] = []
    if plan.skipped:  # as the policy says; only a capped `all` loses ticks it was asked to run
        dropped = sched.catchup == "all"
        log.log(logging.WARNING if dropped else logging.INFO, "scheduler: %s, schedule %r: %s",
                sched.workflow, sched.cron, plan.note(sched.catchup))
        if dropped:
            errors.append(plan.note(sched.catchup) or "")
    for tick in plan.fire:
        try:
            data = validate_input(workflow, sched.run_input(tick))
            planned.append(engine.plan_run(workflow, data, dedupe_key=sched.dedupe_key(tick)))
        except _CONNECTION_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's input function: that tick fails
            result.errors += 1
            error = f"tick {tick.isoformat()}: no run started: {type(exc).__name__}: {exc}"
            log.error("scheduler: %s, schedule %r: %s", sched.workflow, sched.cron, error)
            errors.append(error)
    from .events import insert_runs

    if planned:
        engine.record_versions()
    with engine.transaction() as (session, outbox):
        started = insert_runs(engine, session, outbox, planned)
        newest = _utc(plan.newest)
        values: dict[str, Any] = {
            "last_tick": newest, "next_fire_at": _utc(plan.next_fire), "updated_at": now,
            "last_error": "; ".join(errors)[:MAX_ERROR] or None,
        }
        if started:
            values["last_run_id"] = uuid.UUID(started[-1])
        session.execute(
            update(_table)
            .where(*_key(sched), or_(_table.c.last_tick.is_(None), _table.c.last_tick < newest))
            .values(**values)
        )
    result.started.extend(started)
    result.duplicates += len(planned) - len(started)
    if started:
        log.info("scheduler: %s, schedule %r: started %d run(s)", sched.workflow, sched.cron, len(started))


def _utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive one (SQLite gives those back) is taken as UTC."""
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _key(sched: Schedule) -> tuple[Any, Any]:
    return (_table.c.workflow == sched.workflow, _table.c.schedule_id == sched.id)


def _record_error(engine: WorkflowEngine, sched: Schedule, error: str, now: datetime) -> None:
    try:
        with engine.sessions() as session, session.begin():
            session.execute(update(_table).where(*_key(sched)).values(
                last_error=error[:MAX_ERROR], updated_at=now))
    except Exception:  # noqa: BLE001 - logged above already; the next pass tries again
        log.debug("scheduler: could not record the error of %s", sched.workflow, exc_info=True)


# -- what the CLI, the API and the dashboard show and do --------------------------------------


def _listed(registry: Registry, workflow: str | None) -> list[Schedule]:
    if workflow is None:
        return loaded(registry)
    found = schedules_of(registry.get(workflow))  # WorkflowNotFound for an unknown name
    if not found:
        raise ScheduleNotFound(
            f"workflow {workflow!r} has no schedules; give it triggers=[schedule(cron, ...)]"
        )
    return found


def _as_dict(sched: Schedule, row: Any) -> dict[str, Any]:
    def iso(moment: datetime | None) -> str | None:
        return _utc(moment).isoformat() if moment is not None else None

    return {
        "workflow": sched.workflow,
        "id": sched.id,
        "cron": sched.cron,
        "timezone": sched.timezone,
        "catchup": sched.catchup,
        "paused": bool(row.paused),
        "active_since": iso(row.active_since),
        "last_tick": iso(row.last_tick),
        "next_fire_at": None if row.paused else iso(row.next_fire_at),
        "last_run_id": str(row.last_run_id) if row.last_run_id is not None else None,
        "last_error": row.last_error,
        "updated_at": iso(row.updated_at),
    }


def list_schedules(session: Session, registry: Registry, workflow: str | None = None) -> list[dict[str, Any]]:
    """Every loaded schedule (or `workflow`'s) with its state; rows are made for new ones.

    Commits (a row made here is the schedule's first sighting, as by the scheduler).
    """
    schedules = _listed(registry, workflow)
    if not schedules:
        return []
    now = clock.now()
    ensure_rows(session, schedules, now)
    session.commit()
    rows = _rows(session, schedules)
    return [_as_dict(s, rows[(s.workflow, s.id)]) for s in schedules]


def set_paused(session: Session, registry: Registry, workflow: str, paused: bool) -> list[dict[str, Any]]:
    """Pause or resume every schedule of `workflow`; returns them. Commits once.

    Resuming makes the schedule active from now: ticks missed while it was paused do not
    fire (catchup is about ticks missed while no scheduler ran). Resuming a schedule that is
    not paused, or pausing one that is, changes nothing.
    """
    schedules = _listed(registry, workflow)
    now = clock.now()
    ensure_rows(session, schedules, now)
    values: dict[str, Any] = {"paused": paused, "updated_at": now}
    if not paused:
        values["active_since"] = now
        values["last_error"] = None
    session.execute(update(_table).where(_table.c.workflow == workflow, _table.c.paused.is_(not paused))
                    .values(**values))
    if not paused:
        for sched in schedules:
            session.execute(update(_table).where(*_key(sched)).values(next_fire_at=_utc(sched.next_after(now))))
    session.commit()
    rows = _rows(session, schedules)
    return [_as_dict(s, rows[(s.workflow, s.id)]) for s in schedules]
