"""What a test inspects: runs, their steps and attempts, and what a published event did.

`RunResult` is a handle on one run that reads the database whenever it is asked, so after
`advance` it already shows what the retries did. The `StepResult`s and `AttemptResult`s it
hands out are snapshots of that moment (plain frozen dataclasses, easy to compare).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ..db.models import Attempt, OutboxRow, Run, StepRun
from ..db.queries import get_run
from ..emits import headers_of_json
from ..intake import IGNORED, MATCHED, REJECTED
from .kafka import SentMessage


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were written in UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class AttemptResult:
    """One attempt of a step: how it ended, its error and traceback, its log lines."""

    number: int
    status: str
    error: str | None
    traceback: str | None
    #: The attempt's log records as stored: `{"ts", "level", "message"}`.
    log_records: tuple[dict[str, Any], ...]
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None

    @property
    def logs(self) -> list[str]:
        """The messages of the attempt's log lines, in order."""
        return [line["message"] for line in self.log_records]

    @classmethod
    def of(cls, row: Attempt) -> AttemptResult:
        return cls(row.number, row.status, row.error, row.traceback, tuple(row.logs or ()),
                   _aware(row.started_at), _aware(row.finished_at), row.worker)


@dataclass(frozen=True)
class EmittedEvent:
    """An event a step emitted with `ctx.emit`, as its outbox row holds it.

    Only a succeeded attempt's emits exist (a failed attempt's were discarded); `sent` says
    whether a relay published it (the harness runs none, so it stays False there).
    """

    topic: str
    value: Any
    key: str | None
    headers: dict[str, bytes]
    event_id: str
    run_id: str
    step: str
    attempt: int
    sent: bool

    @classmethod
    def of(cls, row: Any) -> EmittedEvent:
        return cls(row.topic, row.value, row.key, dict(headers_of_json(row.headers)), str(row.event_id),
                   str(row.run_id), row.step, row.attempt, row.sent_at is not None)


def emitted_events(session: Session, run_id: Any = None) -> list[EmittedEvent]:
    """Every emitted event (of one run, if given), in the order they were written."""
    table = OutboxRow.__table__
    query = select(table).order_by(table.c.id)
    if run_id is not None:
        query = query.where(table.c.run_id == run_id)
    return [EmittedEvent.of(row) for row in session.execute(query)]


@dataclass(frozen=True)
class StepResult:
    """One step of a run: status, result, error, why it was skipped or cancelled, attempts."""

    name: str
    status: str
    result: Any
    error: str | None
    #: Why the engine skipped or cancelled the step, when it says (`StepRun.reason`).
    reason: str | None
    attempts: tuple[AttemptResult, ...]
    queue: str
    started_at: datetime | None
    finished_at: datetime | None
    #: What the step emitted with `ctx.emit` (its succeeded attempt's emits only), in order.
    emits: tuple[EmittedEvent, ...] = ()

    @property
    def logs(self) -> list[str]:
        """The log messages of every attempt, in order."""
        return [message for attempt in self.attempts for message in attempt.logs]

    @classmethod
    def of(cls, row: StepRun, emits: tuple[EmittedEvent, ...] = ()) -> StepResult:
        attempts = tuple(AttemptResult.of(a) for a in sorted(row.attempt_rows, key=lambda a: a.number))
        return cls(row.name, row.status, row.result, row.error, row.reason, attempts, row.queue,
                   _aware(row.started_at), _aware(row.finished_at), emits)


@dataclass(frozen=True)
class RunState:
    """A run as it is now in the database."""

    status: str
    error: str | None
    input: Any
    version: str | None
    event_id: int | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    steps: dict[str, StepResult]

    @classmethod
    def of(cls, row: Run, emitted: list[EmittedEvent] | None = None) -> RunState:
        by_step: dict[str, list[EmittedEvent]] = {}
        for event in emitted or ():
            by_step.setdefault(event.step, []).append(event)
        return cls(row.status, row.error, row.input, row.version, row.event_id,
                   _aware(row.created_at), _aware(row.started_at), _aware(row.finished_at),
                   {s.name: StepResult.of(s, tuple(by_step.get(s.name, ())))
                    for s in sorted(row.steps, key=lambda s: s.id)})


class RunResult:
    """A run of the harness; every attribute but `id` and `workflow` is read afresh."""

    def __init__(self, sessions: sessionmaker[Session], run_id: str, workflow: str) -> None:
        self._sessions = sessions
        self.id = run_id
        self.workflow = workflow

    def state(self) -> RunState:
        """Everything about the run, read in one go (one consistent snapshot)."""
        with self._sessions() as session:
            row = get_run(session, self.id)
            return RunState.of(row, emitted_events(session, row.id))

    @property
    def status(self) -> str:
        return self.state().status

    @property
    def error(self) -> str | None:
        return self.state().error

    @property
    def input(self) -> Any:
        return self.state().input

    @property
    def event_id(self) -> int | None:
        return self.state().event_id

    @property
    def finished_at(self) -> datetime | None:
        return self.state().finished_at

    @property
    def steps(self) -> dict[str, StepResult]:
        return self.state().steps

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        state = self.state()
        steps = ", ".join(f"{name}={step.status}" for name, step in state.steps.items())
        return f"<RunResult {self.workflow} {self.id} {state.status}: {steps}>"


@dataclass(frozen=True)
class PublishOutcome:
    """What one published message did, as the consumer recorded it.

    `outcome` is the recorded event's: `matched`, `ignored` or `rejected` (with `reason`).
    `runs` are the runs it started (none for a duplicate dedupe value or a redelivery).
    `dead_letters` are the copies sent to the dead-letter topic (a rejected event's).
    """

    topic: str
    partition: int
    offset: int
    outcome: str
    reason: str | None
    event_id: int | None
    runs: list[RunResult] = field(default_factory=list)
    #: The message was already recorded (same topic, partition and offset): a redelivery.
    redelivered: bool = False
    dead_letters: list[SentMessage] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        return self.outcome == MATCHED

    @property
    def ignored(self) -> bool:
        return self.outcome == IGNORED

    @property
    def rejected(self) -> bool:
        return self.outcome == REJECTED
