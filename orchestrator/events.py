"""Recording events and starting the runs they trigger; replaying a recorded event.

`record_batch` writes one poll batch in one transaction: the events with a bulk
`INSERT ... ON CONFLICT DO NOTHING` (on (topic, partition, offset), and on the
`orchestrator-event-id` header of an emit relayed by an orchestrator, kept as
`source_event_id`, so a relay's re-send at another offset is a duplicate too), then the
runs of the events that were new, with a bulk `INSERT ... ON CONFLICT DO NOTHING` that lets the (event,
workflow) and (workflow, dedupe key) unique constraints drop any run that would be a second
one. A redelivered message therefore records nothing and starts nothing, whoever delivers it
and however often. First-step messages go to Celery after the commit (the engine's outbox).

`replay_event` re-evaluates one recorded event against today's triggers and starts its runs
exactly as a new event would (the dashboard's `POST /api/events/<id>/replay` calls it).

Runs are planned by the engine itself (`WorkflowEngine.plan_run`, no I/O), so a run started
by an event is indistinguishable from one started by hand; only the writing is done here,
in bulk.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select, tuple_
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from . import clock, tracing, waiting
from .db import windows
from .db.inserts import insert_all, insert_ignoring_conflicts
from .db.models import Event, Run, StepRun
from .dead_letters import DeadLetter
from .dispatch import Dispatch
from .emits import EVENT_ID_HEADER
from .engine import PlannedRun, WorkflowEngine
from .errors import EventNotFound, OrchestratorError
from .formats import JSON, Readings
from .intake import (
    IGNORED,
    MATCHED,
    REJECTED,
    Assessment,
    Decision,
    Message,
    TriggerIndex,
    assess,
    describe_error,
    exact_text,
    headers_json,
    headers_of,
    text_of,
)

log = logging.getLogger("orchestrator.events")

#: Longest `orchestrator-event-id` kept as `events.source_event_id` (its column's width).
SOURCE_EVENT_ID_LENGTH = 64


class EventNotReplayable(OrchestratorError):
    """A recorded event whose body was not kept cannot be evaluated again."""


@dataclass
class BatchResult:
    """What one batch did: events new to the database, redeliveries, runs, dead letters."""

    recorded: int = 0
    duplicates: int = 0
    run_ids: list[str] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: Outcomes of the events new to the database.
    outcomes: Counter[str] = field(default_factory=Counter)
    #: Of `duplicates`, those at a new offset whose `orchestrator-event-id` was recorded
    #: (a relay sent the emit again).
    resent: int = 0
    #: Events of the batch that completed at least one open wait (`wait_for_event`).
    waits_completed: int = 0


def _traceparent(assessment: Assessment) -> str | None:
    """The `traceparent` of an event's intake span (tracing on), for its dead letter."""
    return None if assessment.trace is None else tracing.traceparent_of(assessment.trace)


def _timestamp(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def event_row(assessment: Assessment, received_at: datetime) -> dict[str, Any]:
    """The `events` row of an assessed message.

    The payload is the value's JSON object (null when it is not one); the raw bytes are
    always kept, with the key and headers, so a replay reads the message in any trigger's
    format (a CloudEvent's headers, a text value) as it arrived.
    """
    message = assessment.message
    row: dict[str, Any] = {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": text_of(message.key),
        "headers": headers_json(message.headers),
        "kafka_timestamp": _timestamp(message.timestamp_ms),
        "received_at": received_at,
        "outcome": assessment.outcome,
        "reason": assessment.reason,
    }
    if assessment.payload is not None:
        row["payload"] = assessment.payload
    row["raw"] = message.value
    if message.key is not None and not exact_text(message.key):
        row["raw_key"] = message.key
    source = source_event_id(message)
    if source is not None:
        row["source_event_id"] = source
    return row


def source_event_id(message: Message) -> str | None:
    """The message's `orchestrator-event-id` header (an orchestrator's relayed emit), the
    key on which its re-sends are recognised; None without one, or if it is not 1-64
    characters of UTF-8 text (then the message is an ordinary event). Of several, the last
    counts: the latest hop's (a dead-letter copy keeps the original's and adds its own)."""
    for name, value in reversed(message.headers):
        if name == EVENT_ID_HEADER:
            try:
                text = value.decode("utf-8").strip()
            except UnicodeDecodeError:
                return None
            return text if 0 < len(text) <= SOURCE_EVENT_ID_LENGTH and "\x00" not in text else None
    return None


# -- writing -------------------------------------------------------------------------------


def insert_events(session: Session, rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int, int], int]:
    """Insert event rows, skipping those already recorded; returns the new ones' ids by key.

    Already recorded: the same (topic, partition, offset), or the same `source_event_id`
    (a relay's re-send of an emit, at another offset). Any unique constraint therefore
    skips a row, as the consumer's dedupe always did.
    """
    inserted = insert_ignoring_conflicts(
        session, Event.__table__, rows,
        conflict_columns=None,
        returning=("id", "topic", "partition", "offset"),
    )
    return {(topic, partition, offset): event_id for event_id, topic, partition, offset in inserted}


def plan_runs(engine: WorkflowEngine, assessment: Assessment) -> tuple[Assessment, list[PlannedRun]]:
    """The runs an assessed event starts, planned by the engine (no I/O).

    A run the engine refuses to plan (say, its concurrency key cannot be computed from the
    input) turns that workflow's decision into a rejection, and so the event's outcome.
    Each workflow is its own failure domain: whatever planning one of them raises (a bug
    included) is recorded as its reason, and the other workflows the event matched start.
    """
    planned: list[PlannedRun] = []
    refused: dict[str, str] = {}
    if assessment.trace is not None:  # the runs' spans are children of the event's intake
        with tracing.attached(assessment.trace):
            return _plan_runs(engine, assessment, planned, refused)
    return _plan_runs(engine, assessment, planned, refused)


def _plan_runs(engine: WorkflowEngine, assessment: Assessment, planned: list[PlannedRun],
               refused: dict[str, str]) -> tuple[Assessment, list[PlannedRun]]:
    for decision in assessment.to_start:
        try:
            planned.append(
                engine.plan_run(
                    engine.registry.get(decision.workflow),
                    decision.input or {},
                    dedupe_key=decision.dedupe_key,
                )
            )
        except OrchestratorError as exc:
            refused[decision.workflow] = str(exc)
        except Exception as exc:  # noqa: BLE001 - one workflow's failure must not stop the others
            message = assessment.message
            log.exception("event %s/%s/%s: could not plan a run of workflow %r",
                          message.topic, message.partition, message.offset, decision.workflow)
            refused[decision.workflow] = describe_error(
                exc, f"workflow {decision.workflow!r}: could not plan a run: "
            )
    if not refused:
        return assessment, planned
    decisions = [
        Decision(d.workflow, REJECTED, reason=refused[d.workflow]) if d.workflow in refused else d
        for d in assessment.decisions
    ]
    reason = "; ".join(filter(None, [assessment.reason, *refused.values()]))
    return replace(assessment, outcome=REJECTED, reason=reason, decisions=decisions), planned


def insert_runs(
    engine: WorkflowEngine,
    session: Session,
    outbox: list[Dispatch],
    planned: Iterable[PlannedRun],
) -> list[str]:
    """Add planned runs to an open transaction, skipping each that would be a second one.

    A run is skipped when its (event, workflow) pair already has a run or its workflow
    already has a run with the same dedupe key (earlier, or earlier in `planned`). Runs of
    workflows with a concurrency limit are then admitted by the engine. Returns the ids of
    the runs added; their first steps are in `outbox`.
    """
    unique: list[PlannedRun] = []
    seen: set[tuple[str, str]] = set()
    for p in planned:
        dedupe = (p.run["workflow"], p.run["dedupe_key"])
        if dedupe[1] is not None:
            if dedupe in seen:
                continue
            seen.add(dedupe)
        unique.append(p)
    if not unique:
        return []
    inserted = insert_ignoring_conflicts(
        session, Run.__table__, [p.run for p in unique], returning=("id",)
    )
    created = {run_id for (run_id,) in inserted}
    kept = [p for p in unique if p.run["id"] in created]
    insert_all(session, StepRun.__table__, [row for p in kept for row in p.steps])
    for p in kept:
        outbox.extend(p.dispatches)
    engine.open_waits(session, outbox, [row for p in kept for row in p.waits])
    engine.admit_planned(session, outbox, kept)
    engine.insert_planned(session, outbox, [c for p in kept for c in p.children])
    return [str(p.run["id"]) for p in kept]


def recorded_events(engine: WorkflowEngine, messages: Iterable[Message]) -> dict[tuple[str, int, int], Assessment]:
    """The messages already recorded as events, as their recorded assessments, in one query.

    The consumer asks before evaluating any trigger, so a redelivered batch (after a failed
    commit or a rebalance) costs one query, not a second run of every trigger function.
    """
    wanted = {m.position: m for m in messages}
    if not wanted:
        return {}
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for topic, partition, offset in wanted:
        low, high = spans.get((topic, partition), (offset, offset))
        spans[(topic, partition)] = (min(low, offset), max(high, offset))
    table = Event.__table__
    query = select(table.c.topic, table.c.partition, table.c.offset, table.c.id,
                   table.c.outcome, table.c.reason, table.c.kafka_timestamp).where(or_(*(
                       and_(table.c.topic == topic, table.c.partition == partition,
                            table.c.offset.between(low, high))
                       for (topic, partition), (low, high) in spans.items()
                   )))
    with engine.sessions() as session:
        found = [row for row in session.execute(query).all() if _key_of_row(row) in wanted]
    for row in found:
        _warn_if_reused(row, wanted[_key_of_row(row)])
    return {
        (t, p, o): Assessment(wanted[(t, p, o)], outcome, reason, event_id=event_id)
        for t, p, o, event_id, outcome, reason, _ in found
    }


def _key_of_row(row: Any) -> tuple[str, int, int]:
    return (row.topic, row.partition, row.offset)


#: Topic partitions already warned about (`_warn_if_reused`), once per process each.
_REUSED: set[tuple[str, int]] = set()


def _warn_if_reused(row: Any, message: Message) -> None:
    """A message at a recorded offset whose Kafka timestamp differs is not a redelivery: the
    topic was created again (or `orchestrator dev` restarted its in-memory broker while the
    database kept its events). It is still skipped, as its offset is recorded: say so once."""
    recorded, now = row.kafka_timestamp, _timestamp(message.timestamp_ms)
    if recorded is None or now is None or (message.topic, message.partition) in _REUSED:
        return
    if abs((_aware(recorded) - now).total_seconds()) < 0.001:
        return
    _REUSED.add((message.topic, message.partition))
    log.warning(
        "event %s/%s/%s: this offset is recorded already, for a message of %s; this one is of %s. "
        "The topic was deleted and created again (or the embedded broker of `orchestrator dev` "
        "restarted while its database kept the events), so messages at recorded offsets are "
        "skipped as duplicates. Start from an empty database (in dev: remove .orchestrator/) "
        "or use a new topic.",
        message.topic, message.partition, message.offset, _aware(recorded).isoformat(), now.isoformat(),
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- services ---------------------------------------------------------------------------


def record_batch(
    engine: WorkflowEngine,
    assessments: Sequence[Assessment],
    received_at: datetime | None = None,
) -> BatchResult:
    """Record a poll batch and start its runs in one transaction (see the module docstring).

    Rejected events come back as dead letters, including rejected events recorded by an
    earlier delivery (that delivery may have died before copying them), so the dead-letter
    topic gets every rejected event at least once. An assessment with an `event_id` (see
    `recorded_events`) is such an earlier one: nothing is planned or written for it.
    """
    received_at = received_at or clock.now()
    unique: dict[tuple[str, int, int], Assessment] = {}
    plans: dict[tuple[str, int, int], list[PlannedRun]] = {}
    known: dict[tuple[str, int, int], Assessment] = {}
    for assessment in assessments:
        key = assessment.message.position
        if key in unique or key in known:
            continue
        if assessment.event_id is not None:
            known[key] = assessment
        else:
            unique[key], plans[key] = plan_runs(engine, assessment)
    result = BatchResult(duplicates=len(known))
    for assessment in known.values():
        if assessment.outcome == REJECTED and assessment.event_id is not None:
            result.dead_letters.append(
                DeadLetter(assessment.message, assessment.reason or "rejected", assessment.event_id,
                           _traceparent(assessment))
            )
    if not unique:
        return result
    if any(plans.values()):
        engine.record_versions()
    with engine.transaction() as (session, outbox):
        new_ids = insert_events(session, [event_row(a, received_at) for a in unique.values()])
        redelivered = [k for k in unique if k not in new_ids]
        earlier: dict[tuple[str, int, int], tuple[int, str, str | None]] = {}
        if redelivered:
            table = Event.__table__
            found = session.execute(
                select(table.c.topic, table.c.partition, table.c.offset, table.c.id,
                       table.c.outcome, table.c.reason)
                .where(tuple_(table.c.topic, table.c.partition, table.c.offset).in_(redelivered))
            )
            earlier = {(t, p, o): (i, outcome, reason) for t, p, o, i, outcome, reason in found}
        to_insert: list[PlannedRun] = []
        joining: list[windows.Joining] = []
        for key, assessment in unique.items():
            if key in new_ids:
                event_id = new_ids[key]
                result.outcomes[assessment.outcome] += 1
                joining.extend(windows.Joining(event_id, d) for d in assessment.to_window)
                for planned in plans[key]:
                    planned.run["event_id"] = event_id
                    to_insert.append(planned)
                if assessment.outcome == REJECTED:
                    result.dead_letters.append(
                        DeadLetter(assessment.message, assessment.reason or "rejected", event_id,
                                   _traceparent(assessment))
                    )
            elif key in earlier:
                event_id, outcome, reason = earlier[key]
                if outcome == REJECTED:
                    result.dead_letters.append(
                        DeadLetter(assessment.message, reason or "rejected", event_id, _traceparent(assessment))
                    )
            else:  # not at this offset: its orchestrator-event-id is recorded (a re-send)
                message = assessment.message
                result.resent += 1
                log.info("event %s/%s/%s: a re-send of emitted event %s, already recorded; "
                         "skipped as a duplicate", message.topic, message.partition,
                         message.offset, source_event_id(message))
        result.recorded = len(new_ids)
        result.duplicates += len(unique) - len(new_ids)
        # Windows first: their locks come before the runs' concurrency keys (db.windows).
        result.run_ids = windows.absorb(engine, session, outbox, joining, received_at) if joining else []
        result.run_ids += insert_runs(engine, session, outbox, to_insert)
        fresh = [(new_ids[k], a.message, a.payload) for k, a in unique.items()
                 if k in new_ids and a.payload is not None]
        completed = waiting.match_events(engine, session, outbox, fresh,
                                         engine.registry.wait_paths, clock.now())
        if completed:
            result.waits_completed = len(completed)
            ignored = [new_ids[k] for k, a in unique.items()
                       if k in new_ids and new_ids[k] in completed and a.outcome == IGNORED]
            if ignored:  # an event that completed a wait was not ignored
                waiting.mark_matched(session, ignored)
                result.outcomes[IGNORED] -= len(ignored)
                result.outcomes[MATCHED] += len(ignored)
    return result


def record_batch_setting_aside(engine: WorkflowEngine, assessments: Sequence[Assessment]) -> BatchResult:
    """`record_batch`; if the database refuses the batch's data, the events are recorded one
    by one and the one it refuses is recorded `rejected` without its data ("could not be
    stored: ..."), so one event can never stop the consumer (or a reprocess). The database
    being away (`OperationalError` and kin) is raised, for the caller to retry."""
    try:
        return record_batch(engine, assessments)
    except (OperationalError, InterfaceError, DisconnectionError):
        raise
    except Exception as exc:  # noqa: BLE001 - one event's data must not stop the intake
        if len(assessments) == 1:
            return _record_unstorable(engine, assessments[0], exc)
        log.warning("the database refused a batch (%s); recording its events one by one",
                    first_line(exc))
        total = BatchResult()
        for assessment in assessments:
            one = record_batch_setting_aside(engine, [assessment])
            total.recorded += one.recorded
            total.duplicates += one.duplicates
            total.resent += one.resent
            total.run_ids += one.run_ids
            total.dead_letters += one.dead_letters
            total.outcomes.update(one.outcomes)
        return total


def _record_unstorable(engine: WorkflowEngine, assessment: Assessment, exc: Exception) -> BatchResult:
    reason = f"could not be stored: {first_line(exc)}"
    log.warning("event %s/%s/%s %s", assessment.message.topic, assessment.message.partition,
                assessment.message.offset, reason)
    return record_batch(engine, [Assessment(assessment.message, REJECTED, reason)])


def first_line(exc: BaseException) -> str:
    """The first line of a (database) error's message, for a log line or a recorded reason."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def replay_event(engine: WorkflowEngine, event_id: int) -> list[str]:
    """Evaluate a recorded event against today's triggers and start its runs; returns their ids.

    Runs start exactly as for a new event: at most one per (event, workflow) and per dedupe
    value, so replaying twice, or replaying an event that already started a workflow, starts
    nothing more for it. The event's outcome and reason are updated to what this evaluation
    found; when they change, the reason keeps what it was before. Rejected events are not
    copied to the dead-letter topic again. Raises `EventNotFound` for an unknown id and
    `EventNotReplayable` for an event whose body was not kept.
    """
    index = TriggerIndex(engine.registry)
    engine.record_versions()
    with engine.transaction() as (session, outbox):
        event = session.scalars(
            select(Event).where(Event.id == event_id).with_for_update()
        ).one_or_none()
        if event is None:
            raise EventNotFound(f"no event {event_id}")
        message, readings = _recorded_message(event, engine.settings.max_event_bytes,
                                              engine.settings.dlq_suffix)
        assessment = assess(message, index, engine.settings.max_event_bytes, readings=readings)
        return replay_assessed(engine, session, outbox, event, assessment)[1]


def replay_assessed(
    engine: WorkflowEngine,
    session: Session,
    outbox: list[Dispatch],
    event: Event,
    assessment: Assessment,
    only: str | None = None,
) -> tuple[Assessment, list[str]]:
    """Start the runs a fresh assessment of a recorded (and locked) event calls for.

    The heart of `replay_event`, also used by `reprocess` (which assesses the message as
    read again from Kafka). `only` limits the runs to one workflow's; the event's outcome is
    then left as recorded, since only part of its triggers were looked at. Returns the
    assessment as planned (a refused plan is a rejection) and the ids of the runs started.
    """
    if only is not None:
        assessment = narrowed(assessment, only)
    assessment, planned = plan_runs(engine, assessment)
    for p in planned:
        p.run["event_id"] = event.id
    for decision in assessment.to_window:  # see `_outside_window`
        direct = _outside_window(engine, session, event.id, decision)
        if direct is not None:
            planned.append(direct)
    run_ids = insert_runs(engine, session, outbox, planned)
    if only is None and (assessment.outcome, assessment.reason) != (event.outcome, event.reason):
        before = event.outcome + (f": {event.reason}" if event.reason else "")
        replayed = clock.now().isoformat(timespec="seconds")
        event.reason = assessment.reason or f"replayed {replayed}; was {before}"
        event.outcome = assessment.outcome
    if event.payload is None and assessment.payload is not None:
        event.payload = assessment.payload
    return assessment, run_ids


def narrowed(assessment: Assessment, workflow: str) -> Assessment:
    """The assessment as far as one workflow is concerned: its decision only, and the
    outcome that decision gives (a message that could not be decoded stays rejected)."""
    decisions = [d for d in assessment.decisions if d.workflow == workflow]
    if not assessment.decisions:
        return assessment
    if not decisions:
        return replace(assessment, outcome=IGNORED, reason=None, decisions=[])
    decision = decisions[0]
    reason = None if decision.outcome != REJECTED else f"workflow {workflow!r}: {decision.reason}"
    return replace(assessment, outcome=decision.outcome, reason=reason, decisions=decisions)


def _recorded_message(event: Event, max_bytes: int, dlq_suffix: str) -> tuple[Message, Readings]:
    """The message a recorded event was, rebuilt (value, key, headers), and its readings
    seeded with the stored payload. An event recorded before raw values were always kept
    has its payload alone: the value is that JSON again."""
    value = event.raw
    if value is None and isinstance(event.payload, dict):
        value = json.dumps(event.payload).encode()
    if value is None and not event.headers:
        raise EventNotReplayable(
            f"event {event.id} has neither a payload nor its raw bytes; "
            f"re-publish it from {event.topic}{dlq_suffix} instead"
        )
    message = Message(event.topic, event.partition, event.offset, value=value,
                      key=event.raw_key if event.raw_key is not None
                      else None if event.key is None else event.key.encode(),
                      headers=headers_of(event.headers))
    readings = Readings(message.value, message.headers, max_bytes)
    if isinstance(event.payload, dict):
        readings.seed(JSON, event.payload)
    return message, readings


def _outside_window(engine: WorkflowEngine, session: Session, event_id: int,
                    decision: Decision) -> PlannedRun | None:
    """A replayed event that a debounce or batch trigger matches: if it is in a window
    already (open, or closed with its run), nothing; else a run of its own, with the input
    a window of just this event would give (`$events` or `events` of one)."""
    if windows.window_of_event(session, event_id, decision.workflow) is not None:
        return None
    from .windows import run_input

    try:
        planned = engine.plan_run(
            engine.registry.get(decision.workflow),
            run_input(decision.window, [(event_id, decision.input or {})]),
            dedupe_key=None if decision.window.kind == "batch" else decision.dedupe_key,
        )
    except OrchestratorError as exc:
        log.warning("replay of event %s: workflow %r: %s", event_id, decision.workflow, exc,
                    extra={"event_id": event_id})
        return None
    planned.run["event_id"] = event_id
    return planned
