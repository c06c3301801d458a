"""Reprocessing a topic: read a time or offset range of it again and start what is missing.

`orchestrator reprocess` and `POST /api/reprocess` call `reprocess`. It reads the range with a
consumer of its own (no group: `assign` and `seek`, so the production group's offsets are
never read nor moved) and evaluates each message against today's triggers:

- a message never recorded is recorded and starts its runs exactly as the consumer would
  (`events.record_batch`): every workflow it matches, even with `workflow=`, since the
  consumer, reaching it later, skips it as recorded; a rejected one is copied to the
  dead-letter topic, as the consumer copies it;
- a recorded one starts what `replay` would (`events.replay_assessed`), assessed as read
  from Kafka: at most one run per (event, workflow) and per dedupe value, so reprocessing
  twice starts nothing the second time.

What the range is and how it is read (Tansu's quirks included): `ranges`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select, tuple_

from . import tracing
from .db import windows
from .db.models import Event, Run
from .dead_letters import DeadLetter, ensure_dead_letter_topics, send_dead_letters
from .engine import WorkflowEngine
from .errors import KafkaUnreachable
from .events import (
    narrowed,
    plan_runs,
    record_batch_setting_aside,
    recorded_events,
    replay_assessed,
)
from .intake import IGNORED, REJECTED, Assessment, Message, TriggerIndex, assess
from .kafka import create_consumer, create_producer, quiet_client_logs, reachable
from .ranges import Progress, ReprocessError, Request, make_request, read_range
from .settings import Settings

#: Most run ids (and would-start entries) a summary lists; the counts are always complete.
MAX_LISTED = 1000


@dataclass
class Summary:
    """What a reprocess did (or, dry, would do); every message read is in exactly one of
    `already_handled`, `new` (it started a run), `rejected` and `ignored`."""

    topic: str
    dry_run: bool
    read: int = 0
    #: Messages recorded for the first time (dry: that would be).
    recorded: int = 0
    #: Matched messages that start nothing new: their runs exist (or they joined a window).
    already_handled: int = 0
    #: Messages that started at least one run.
    new: int = 0
    #: Messages today's triggers reject, or no workflow matches.
    rejected: int = 0
    ignored: int = 0
    #: Runs started (dry: that would start).
    started: int = 0
    #: The first `MAX_LISTED` of them: run ids, or (dry) where and which workflow.
    runs: list[str] = field(default_factory=list)
    would_start: list[dict[str, Any]] = field(default_factory=list)
    #: (workflow, dedupe value) pairs a dry run has seen start already, across batches.
    dedupes: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic, "dry_run": self.dry_run, "read": self.read,
            "recorded": self.recorded, "already_handled": self.already_handled,
            "started": self.started, "rejected": self.rejected, "ignored": self.ignored,
            "runs": self.runs, "would_start": self.would_start,
        }

    def line(self) -> str:
        verb = "would start" if self.dry_run else "started"
        return (f"read {self.read} message(s) of {self.topic}: {self.already_handled} already handled, "
                f"{verb} {self.started} run(s), {self.rejected} rejected, {self.ignored} ignored; "
                f"{self.recorded} {'would be ' if self.dry_run else ''}recorded for the first time")

    def add_runs(self, run_ids: list[str]) -> None:
        self.started += len(run_ids)
        self.runs += run_ids[: max(0, MAX_LISTED - len(self.runs))]

    def add_would_start(self, message: Message, workflows: list[str]) -> None:
        self.started += len(workflows)
        room = max(0, MAX_LISTED - len(self.would_start))
        self.would_start += [
            {"topic": message.topic, "partition": message.partition, "offset": message.offset,
             "workflow": w} for w in workflows[:room]
        ]

    def count(self, outcome: str, started: bool) -> None:
        if outcome == REJECTED:
            self.rejected += 1
        elif outcome == IGNORED:
            self.ignored += 1
        elif started:
            self.new += 1
        else:
            self.already_handled += 1


# -- the service -------------------------------------------------------------------------


def reprocess(engine: WorkflowEngine, request: Request, progress: Progress | None = None) -> Summary:
    """Read the range and start what it calls for (see the module docstring)."""
    settings = engine.settings
    index = TriggerIndex(engine.registry)
    if request.topic not in index.topics:
        raise ReprocessError(
            f"no loaded workflow has a Kafka trigger (or a wait_for_event) on topic {request.topic!r}"
        )
    if request.workflow is not None:
        names = [w.name for w, _ in index.for_topic(request.topic)]
        if request.workflow not in names:
            known = request.workflow in {w.name for w in engine.registry}
            raise ReprocessError(
                f"workflow {request.workflow!r} has no trigger on {request.topic!r}"
                if known else f"no loaded workflow is named {request.workflow!r}"
            )
    quiet_client_logs()
    if not reachable(settings):
        raise KafkaUnreachable(f"cannot reach Kafka at {settings.kafka_bootstrap}")
    from kafka.errors import KafkaError

    try:
        consumer = create_consumer(settings, group_id=None, allow_auto_create_topics=False,
                                   auto_offset_reset="none",  # past the end: raise, never rewind
                                   max_poll_records=max(1, settings.kafka_batch_size))
    except KafkaError as exc:
        raise KafkaUnreachable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from None
    summary = Summary(request.topic, request.dry_run)
    letters = _DeadLetters(settings)
    if not request.dry_run:
        engine.record_versions()
    try:
        for batch in read_range(consumer, request, progress):
            kept = [m for m in batch if request.keeps(m)]
            summary.read += len(kept)
            if kept:
                letters.send(_evaluate(engine, index, request, kept, summary))
    except KafkaError as exc:
        raise KafkaUnreachable(f"Kafka failed while reprocessing {request.topic}: {exc}") from None
    finally:
        consumer.close(autocommit=False)
        letters.close()
    return summary


# -- evaluating a batch -----------------------------------------------------------------------


class _DeadLetters:
    """The dead-letter copies of the rejected messages reprocess records (a producer made
    on the first one)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Any = None

    def send(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        if self._producer is None:
            ensure_dead_letter_topics(self.settings, [letters[0].message.topic])
            self._producer = create_producer(self.settings)
        send_dead_letters(self._producer, letters, self.settings)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)


def _evaluate(engine: WorkflowEngine, index: TriggerIndex, request: Request,
              messages: list[Message], summary: Summary) -> list[DeadLetter]:
    """Evaluate one batch of the range; returns the dead letters of what it recorded."""
    known = recorded_events(engine, messages)
    fresh = [assess(m, index, engine.settings.max_event_bytes)
             for m in messages if m.position not in known]
    recorded = [a for a in (known.get(m.position) for m in messages) if a is not None]
    if request.dry_run:
        _dry(engine, index, request, fresh, recorded, summary)
        return []
    letters = _record(engine, fresh, summary) if fresh else []
    if recorded:
        _replay(engine, index, request, recorded, summary)
    return letters


def _record(engine: WorkflowEngine, fresh: list[Assessment], summary: Summary) -> list[DeadLetter]:
    """Record never-recorded messages as the consumer does; count them by what they did.

    With tracing on, each gets an `event.intake` span (child of its `traceparent` header),
    parent of the runs it starts, as in the consumer.
    """
    if tracing.enabled:
        for a in fresh:
            m = a.message
            a.trace = tracing.start_intake(m.topic, m.partition, m.offset, m.headers)
            a.trace.set_attribute("orchestrator.event.reprocessed", True)
    try:
        result = record_batch_setting_aside(engine, fresh)
    finally:
        for a in fresh:
            if a.trace is not None:
                a.trace.set_attribute("orchestrator.event.outcome", a.outcome)
                a.trace.end()
    summary.recorded += result.recorded
    summary.add_runs(result.run_ids)
    with engine.sessions() as session:
        started = set(session.scalars(
            select(Run.event_id).where(Run.id.in_(result.run_ids)).distinct()
        )) if result.run_ids else set()
        keys = [a.message.position for a in fresh]
        rows = session.execute(
            select(Event.id, Event.topic, Event.partition, Event.offset, Event.outcome)
            .where(tuple_(Event.topic, Event.partition, Event.offset).in_(keys))
        ).all()
    for event_id, _topic, _partition, _offset, outcome in rows:
        summary.count(outcome, event_id in started)
    return result.dead_letters


def _replay(engine: WorkflowEngine, index: TriggerIndex, request: Request,
            recorded: list[Assessment], summary: Summary) -> None:
    """Start what today's triggers call for of recorded messages, one transaction per batch."""
    by_id = {a.event_id: a.message for a in recorded}
    with engine.transaction() as (session, outbox):
        events = session.scalars(
            select(Event).where(Event.id.in_(list(by_id))).order_by(Event.id).with_for_update()
        ).all()
        for event in events:
            assessment = assess(by_id[event.id], index, engine.settings.max_event_bytes)
            planned, run_ids = replay_assessed(engine, session, outbox, event, assessment,
                                               only=request.workflow)
            summary.add_runs(run_ids)
            summary.count(planned.outcome, bool(run_ids))


def _dry(engine: WorkflowEngine, index: TriggerIndex, request: Request, fresh: list[Assessment],
         recorded: list[Assessment], summary: Summary) -> None:
    """What `_record` and `_replay` would start, found by planning (no I/O) and one query
    for the runs already there; nothing is written."""
    items: list[tuple[Message, int | None, Assessment]] = []
    for a in fresh:
        items.append((a.message, None, a))
    for a in recorded:
        fresh_look = assess(a.message, index, engine.settings.max_event_bytes)
        if request.workflow is not None:
            fresh_look = narrowed(fresh_look, request.workflow)
        items.append((a.message, a.event_id, fresh_look))
    planned_items = []
    for message, event_id, a in items:
        a, planned = plan_runs(engine, a)
        planned_items.append((message, event_id, a, [(p.run["workflow"], p.run["dedupe_key"]) for p in planned]))
    event_ids = [e for _, e, _, _ in planned_items if e is not None]
    dedupes = {pair for *_, runs in planned_items for pair in runs if pair[1] is not None}
    with engine.sessions() as session:
        clauses = []
        if event_ids:
            clauses.append(Run.event_id.in_(event_ids))
        if dedupes:
            clauses.append(tuple_(Run.workflow, Run.dedupe_key).in_(list(dedupes)))
        existing = session.execute(
            select(Run.event_id, Run.workflow, Run.dedupe_key).where(or_(*clauses))
        ).all() if clauses else []
        # A recorded event a debounce/batch trigger matches but that is in no window starts
        # a run of its own (see `events._outside_window`).
        outside = {(e, d.workflow) for _, e, a, _ in planned_items if e is not None
                   for d in a.to_window if windows.window_of_event(session, e, d.workflow) is None}
    by_event = {(e, w) for e, w, _ in existing}
    taken = {(w, d) for _, w, d in existing if d is not None}
    taken |= summary.dedupes
    for message, event_id, a, runs in planned_items:
        starting = []
        for workflow, dedupe in runs:
            if event_id is not None and (event_id, workflow) in by_event:
                continue
            if dedupe is not None and (workflow, dedupe) in taken:
                continue
            if dedupe is not None:
                taken.add((workflow, dedupe))
            starting.append(workflow)
        starting += [d.workflow for d in a.to_window
                     if (event_id, d.workflow) in outside and (event_id, d.workflow) not in by_event]
        summary.add_would_start(message, starting)
        if event_id is None:
            summary.recorded += 1
        summary.count(a.outcome, bool(starting))
    summary.dedupes = taken


__all__ = ["KafkaUnreachable", "ReprocessError", "Request", "Summary", "make_request", "reprocess"]
