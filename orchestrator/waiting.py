"""Waiting nodes in the database: opening waits, matching events to them, timers.

The specs are in `orchestrator.waits` (pure); the transitions of the step rows are the
engine's (`WorkflowEngine.open_waits`, `complete_event_wait`, `decide`, `fire_due`). This
module holds the queries they share with the Kafka intake (`match_events`).

Lock order, as everywhere: concurrency keys (sorted), then run rows (by id), then wait
rows. The advisory lock of a correlation (`waits.lock_name`) is taken before any of these
by the intake, and by the opener after its run's lock; it only ever guards a lookback.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, text, update
from sqlalchemy.orm import Session, selectinload

from . import concurrency as C
from . import waits as W
from .db.inserts import insert_ignoring_conflicts
from .db.models import Event, Run, Wait, WaitKey
from .triggers import matches

if TYPE_CHECKING:
    from .dsl import Step, StepContext, Workflow
    from .engine import Outbox, WorkflowEngine
    from .intake import Message

log = logging.getLogger("orchestrator.waiting")

_WAITS = Wait.__table__
_KEYS = WaitKey.__table__
_EVENTS = Event.__table__
_LOCK_SCOPE = "wait"


@dataclass(frozen=True)
class MatchedEvent:
    """A recorded event that completes a wait: its id and payload (the node's result)."""

    event_id: int
    payload: Any


# -- opening --------------------------------------------------------------------------


def opening(run_id: uuid.UUID, workflow: Workflow, step: Step, ctx: StepContext, now: datetime) -> dict[str, Any]:
    """The `waits` row of a node that opens now; runs its user code (correlate, until).

    Raises what that code raises, or ValueError for a value it cannot wait on.
    """
    spec = step.wait
    row: dict[str, Any] = {
        "run_id": run_id, "step": step.name, "kind": step.kind, "status": W.OPEN,
        "topic": None, "paths": None, "correlation": None, "spec": spec.describe() if spec else {},
        "opened_at": now, "due_at": None, "closed_at": None, "event_id": None,
        "decision": None, "comment": None, "decided_by": None,
    }
    where = f"workflow {workflow.name!r}: {step.kind} node {step.name!r}"
    if isinstance(spec, W.EventWait):
        values = {}
        for path in sorted(spec.correlate):
            expected = spec.correlate[path]
            value = expected(ctx) if callable(expected) else expected
            values[path] = W.canonical(where, path, value)
        row.update(topic=spec.topic, paths=spec.paths,
                   correlation=W.correlation_hash(list(values.values())))  # in path order
        row["spec"]["correlate"] = values
    if isinstance(spec, (W.EventWait, W.ApprovalWait)) and spec.timeout is not None:
        row["due_at"] = now + timedelta(seconds=spec.timeout)
    elif isinstance(spec, W.SleepWait):
        if spec.until is not None:
            until = spec.until(ctx)
            if not isinstance(until, datetime) or until.tzinfo is None or until.utcoffset() is None:
                raise ValueError(f"{where}: until returned {until!r}; it must return an aware datetime "
                                 "(datetime.now(UTC) + timedelta(...))")
            row["due_at"] = max(now, until.astimezone(UTC))
        else:
            row["due_at"] = now + timedelta(seconds=spec.duration or 0)
    return row


def opening_error(step: Step, exc: BaseException) -> str:
    if isinstance(exc, ValueError) and str(exc).startswith("workflow "):
        return str(exc)
    what = "correlate" if step.kind == W.EVENT else "until" if step.kind == W.SLEEP else "opening"
    return f"{step.kind} node {step.name!r}: {what} raised {type(exc).__name__}: {exc}"


def insert_waits(session: Session, rows: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Insert open waits; returns (id, row) pairs. Event waits take their correlation's
    advisory lock first (see `waits.lock_name`) and register their (topic, paths)."""
    keyed = [r for r in rows if r["kind"] == W.EVENT]
    if keyed:
        pairs = sorted({(r["topic"], r["paths"]) for r in keyed})
        insert_ignoring_conflicts(session, _KEYS, [{"topic": t, "paths": p} for t, p in pairs],
                                  conflict_columns=("topic", "paths"))
        lock_all(session, [W.lock_name(r["topic"], r["paths"], r["correlation"]) for r in keyed])
    ids = session.execute(
        insert(_WAITS).returning(_WAITS.c.id, sort_by_parameter_order=True), list(rows)
    ).scalars().all()
    return list(zip(ids, rows, strict=True))


def lookback(session: Session, row: Mapping[str, Any]) -> MatchedEvent | None:
    """The earliest recorded event of the wait's topic within its lookback that matches it."""
    spec = row["spec"]
    since = row["opened_at"] - timedelta(seconds=spec["lookback"])
    found = session.execute(
        select(_EVENTS.c.id, _EVENTS.c.payload)
        .where(_EVENTS.c.topic == row["topic"], _EVENTS.c.received_at >= since,
               _EVENTS.c.payload.is_not(None))
        .order_by(_EVENTS.c.received_at, _EVENTS.c.id)
        .limit(W.LOOKBACK_SCAN_LIMIT)
    )
    for event_id, payload in found:
        if W.event_correlation(payload, row["paths"]) == row["correlation"] and matches(
            spec.get("match") or {}, payload
        ):
            return MatchedEvent(event_id, payload)
    return None


def mark_matched(session: Session, event_ids: Sequence[int]) -> None:
    """Events that completed a wait (as they were recorded, or found by a lookback later)
    were not ignored: `matched` now (the outcomes of `orchestrator.intake`)."""
    session.execute(update(_EVENTS).where(_EVENTS.c.id.in_(list(event_ids)), _EVENTS.c.outcome == "ignored")
                    .values(outcome="matched"))


# -- ending ---------------------------------------------------------------------------


def end_wait(session: Session, wait_id: int, status: str, now: datetime, **columns: Any) -> bool:
    """Close an open wait with `status`; False if it was not open (the arbiter of races)."""
    done = session.execute(
        update(_WAITS).where(_WAITS.c.id == wait_id, _WAITS.c.status == W.OPEN)
        .values(status=status, closed_at=now, **columns)
    )
    return done.rowcount == 1


def end_waits(session: Session, wait_ids: Sequence[int], status: str, now: datetime) -> set[int]:
    """`end_wait` for many in one statement; returns the ids of those that were open."""
    if not wait_ids:
        return set()
    done = session.execute(
        update(_WAITS).where(_WAITS.c.id.in_(list(wait_ids)), _WAITS.c.status == W.OPEN)
        .values(status=status, closed_at=now).returning(_WAITS.c.id)
    )
    return set(done.scalars())


def close_waits(session: Session, run_ids: Iterable[uuid.UUID], steps: Iterable[str] | None, now: datetime) -> None:
    """Close the open waits of these runs (of these nodes only, when given)."""
    ids = list(run_ids)
    query = update(_WAITS).where(_WAITS.c.run_id.in_(ids), _WAITS.c.status == W.OPEN)
    if steps is not None:
        query = query.where(_WAITS.c.step.in_(list(steps)))
    session.execute(query.values(status=W.CLOSED, closed_at=now))


def open_wait_of(session: Session, run_id: uuid.UUID, step: str) -> Any:
    return session.execute(
        select(_WAITS.c.id, _WAITS.c.kind).where(
            _WAITS.c.run_id == run_id, _WAITS.c.step == step, _WAITS.c.status == W.OPEN
        )
    ).first()


def not_waiting(session: Session, run: Run, step: str, kind: str | None = None) -> str:
    """Why a decision on `step` of `run` is refused (HTTP 409, a CLI error line); `kind` is
    the node's kind in the run's definition, when that is loaded."""
    row = next((r for r in run.steps if r.name == step), None)
    if row is None:
        return f"run {run.id} has no step {step!r}"
    last = session.execute(
        select(_WAITS.c.kind, _WAITS.c.status, _WAITS.c.decision)
        .where(_WAITS.c.run_id == run.id, _WAITS.c.step == step).order_by(_WAITS.c.id.desc())
    ).first()
    if kind is None:
        kind = last.kind if last is not None else None if row.status == "pending" else W.TASK
    if kind is not None and kind != W.APPROVAL:
        return f"step {step!r} of run {run.id} is not an approval"
    if last is not None and last.decision:
        return f"approval {step!r} of run {run.id} was already decided: {last.decision} (step is {row.status})"
    return f"approval {step!r} of run {run.id} is not waiting (step is {row.status})"


def timed_out(wait: Any) -> str:
    spec = wait.spec or {}
    seconds = spec.get("timeout")
    span_text = W.span(seconds) if seconds else "its timeout"
    if wait.kind == W.APPROVAL:
        return f"timed out: no decision on approval {wait.step!r} within {span_text}"
    where = f" on {wait.topic!r}" if wait.topic else ""
    return f"timed out: no matching event{where} within {span_text}"


# -- timers ---------------------------------------------------------------------------


def due_waits(session: Session, now: datetime, limit: int) -> list[Any]:
    """Open waits whose timer is due, oldest first (`ix_waits_open_due`)."""
    return session.execute(
        select(_WAITS.c.id, _WAITS.c.run_id, _WAITS.c.step, _WAITS.c.kind, _WAITS.c.topic,
               _WAITS.c.spec, _WAITS.c.due_at)
        .where(_WAITS.c.status == W.OPEN, _WAITS.c.due_at.is_not(None), _WAITS.c.due_at <= now)
        .order_by(_WAITS.c.due_at, _WAITS.c.id)
        .limit(limit)
    ).all()


def next_due(session: Session) -> datetime | None:
    moment = session.scalar(
        select(_WAITS.c.due_at).where(_WAITS.c.status == W.OPEN, _WAITS.c.due_at.is_not(None))
        .order_by(_WAITS.c.due_at).limit(1)
    )
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


# -- locking --------------------------------------------------------------------------


def lock_all(session: Session, names: Iterable[str]) -> None:
    """Hold the advisory locks of these correlations until the transaction ends, in sorted
    order, in one statement (no-op off PostgreSQL, where writers are serial anyway)."""
    keys = sorted(set(names))
    if not keys or session.get_bind().dialect.name != "postgresql":
        return
    if len(keys) == 1:
        C.lock_key(session, _LOCK_SCOPE, keys[0])
        return
    session.execute(
        text(
            "SELECT pg_advisory_xact_lock(hashtextextended(:scope || chr(31) || k, 0)) "
            "FROM unnest(CAST(:keys AS text[])) WITH ORDINALITY AS t(k, n) ORDER BY n"
        ),
        {"scope": _LOCK_SCOPE, "keys": keys},
    ).all()


def lock_runs(session: Session, run_ids: Iterable[uuid.UUID], *, skip_locked: bool = False,
              with_steps: bool = False) -> dict[uuid.UUID, Run]:
    """Lock several runs in the global order: their concurrency keys sorted, then the rows
    by id. With `skip_locked`, runs another transaction holds are left out; `with_steps`
    loads their steps too, in one more query (not one per run)."""
    ids = sorted(set(run_ids))
    if not ids:
        return {}
    C.lock_keys_of_runs(session, ids)
    query = select(Run).where(Run.id.in_(ids)).order_by(Run.id).with_for_update(skip_locked=skip_locked)
    if with_steps:
        query = query.options(selectinload(Run.steps))
    return {run.id: run for run in session.scalars(query)}


# -- the intake ------------------------------------------------------------------------


def match_events(
    engine: WorkflowEngine,
    session: Session,
    outbox: Outbox,
    recorded: Sequence[tuple[int, Message, Any]],
    known_paths: Mapping[str, Iterable[str]],
    now: datetime,
) -> set[int]:
    """Complete the open waits that newly recorded events match, in the recording
    transaction; returns the ids of the events that completed at least one.

    Per event, one probe of `ix_waits_open_correlation` per distinct set of correlation
    paths on its topic (those of the loaded code, `known_paths`, and those any wait
    registered in `wait_keys`), batched into one query per (topic, paths). A wait two
    events of the batch match goes to the earlier one; one another transaction completes
    first is left alone (`end_wait`). Each completion is its own failure domain.
    """
    if not recorded:
        return set()
    topics = sorted({message.topic for _, message, _ in recorded})
    paths: dict[str, set[str]] = {t: set(known_paths.get(t, ())) for t in topics}
    for topic, key in session.execute(select(_KEYS.c.topic, _KEYS.c.paths).where(_KEYS.c.topic.in_(topics))):
        paths[topic].add(key)
    probes: dict[tuple[str, str], dict[str, list[MatchedEvent]]] = {}
    for event_id, message, payload in recorded:
        if payload is None:
            continue
        for key in paths[message.topic]:
            correlation = W.event_correlation(payload, key)
            if correlation is not None:
                probes.setdefault((message.topic, key), {}).setdefault(correlation, []).append(
                    MatchedEvent(event_id, payload)
                )
    if not probes:
        return set()
    lock_all(session, [W.lock_name(t, p, c) for (t, p), found in probes.items() for c in found])
    chosen: list[tuple[Any, MatchedEvent]] = []
    for (topic, key), found in probes.items():
        rows = session.execute(
            select(_WAITS.c.id, _WAITS.c.run_id, _WAITS.c.step, _WAITS.c.correlation, _WAITS.c.spec)
            .where(_WAITS.c.status == W.OPEN, _WAITS.c.topic == topic, _WAITS.c.paths == key,
                   _WAITS.c.correlation.in_(list(found)))
        ).all()
        for row in rows:
            match = (row.spec or {}).get("match") or {}
            event = next((e for e in found[row.correlation] if matches(match, e.payload)), None)
            if event is not None:
                chosen.append((row, event))
    if not chosen:
        return set()
    lock_runs(session, {row.run_id for row, _ in chosen}, with_steps=True)
    completed: set[int] = set()
    for row, event in sorted(chosen, key=lambda c: c[0].id):
        try:
            with session.begin_nested():
                if engine.complete_event_wait(session, outbox, row.id, row.run_id, row.step, event, now):
                    completed.add(event.event_id)
        except Exception as exc:  # noqa: BLE001 - one run's failure must not stop the batch
            log.exception("event %s matched wait %s of run %s but could not complete it",
                          event.event_id, row.step, row.run_id)
            _fail_matched(engine, session, outbox, row, event, exc, now)
    return completed


def _fail_matched(engine: WorkflowEngine, session: Session, outbox: Outbox, row: Any,
                  event: MatchedEvent, exc: Exception, now: datetime) -> None:
    """A completion that raised: the node fails with the error (the event is kept)."""
    error = f"event {event.event_id} matched but could not complete the wait: {type(exc).__name__}: {exc}"
    try:
        with session.begin_nested():
            run = session.get(Run, row.run_id, populate_existing=True)
            if run is not None and end_wait(session, row.id, W.MATCHED, now, event_id=event.event_id):
                engine.settle_waiting(session, outbox, run, row.step, "failed", now, error=error[:2000])
    except Exception:  # noqa: BLE001 - logged; the wait stays open for its timer
        log.exception("could not fail wait %s of run %s either", row.step, row.run_id)


def events_of(session: Session, run_id: uuid.UUID, steps: Sequence[str]) -> dict[str, Any]:
    """For each of these event-wait nodes of a run, where its completing event came from."""
    rows = session.execute(
        select(_WAITS.c.step, _WAITS.c.event_id, _WAITS.c.topic, _EVENTS.c.partition,
               _EVENTS.c.offset, _EVENTS.c.key, _EVENTS.c.kafka_timestamp)
        .outerjoin(_EVENTS, _EVENTS.c.id == _WAITS.c.event_id)
        .where(_WAITS.c.run_id == run_id, _WAITS.c.step.in_(list(steps)), _WAITS.c.status == W.MATCHED)
        .order_by(_WAITS.c.id)
    ).all()
    return {
        r.step: {"event_id": r.event_id, "topic": r.topic, "partition": r.partition,
                 "offset": r.offset, "key": r.key,
                 "timestamp": r.kafka_timestamp.isoformat() if r.kafka_timestamp else None}
        for r in rows
    }
