"""Retention: delete finished runs (with their steps and attempts) and old events.

`orchestrator prune --older-than 30d` calls `prune`. What goes:

- a run that finished (`succeeded`, `failed`, `cancelled`) before the cutoff, with no step
  still open (a cancelled run's running step finishes its attempt first), together with its
  steps and their attempts;
- an event received before the cutoff that no remaining run references (an event that
  started a kept run stays, so the run keeps its lineage);
- an outbox row (an event a step emitted) that the relay sent before the cutoff. Unsent
  rows are never deleted, however old, and do not depend on their run being kept.

Pending and running runs are never deleted, however old. The work is done in batches of at
most `batch_size` runs (or events), each its own short transaction that locks only the rows
it deletes: on PostgreSQL `SELECT ... FOR UPDATE SKIP LOCKED`, so a run that a retry or a
replay holds at that moment is skipped, not waited for, and nothing else ever waits long on
the pruner. Running the command again continues where it stopped; a run skipped this time
goes next time.

The age parser is pure (`parse_age`), the rest is I/O on an SQLAlchemy `Engine`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Engine, delete, func, select

from . import planner as P
from .db.models import Attempt, Event, OutboxRow, Run, StepRun
from .errors import OrchestratorError

log = logging.getLogger("orchestrator.retention")

#: Runs (or events) deleted per transaction when `--batch-size` is not given. Small enough
#: that one batch, with its runs' steps and attempts, takes milliseconds.
DEFAULT_BATCH_SIZE = 500
#: What an age's unit letter means.
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

_AGE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")


class InvalidAge(OrchestratorError):
    """An `--older-than` value that is not a whole number followed by s, m, h or d."""


def parse_age(text: str) -> timedelta:
    """`30d`, `12h`, `90m` or `45s` as a `timedelta`; anything else raises `InvalidAge`."""
    match = _AGE.match(text)
    if not match:
        raise InvalidAge(
            f"age {text!r} is not understood: use a whole number and a unit, "
            "s (seconds), m (minutes), h (hours) or d (days), e.g. 30d"
        )
    amount, unit = int(match.group(1)), UNITS[match.group(2)]
    try:
        return timedelta(**{unit: amount})
    except OverflowError:
        raise InvalidAge(f"age {text!r} is too large") from None


def cutoff_for(age: timedelta, now: datetime | None = None) -> datetime:
    """The moment `age` before `now` (UTC); what finished or arrived before it is old."""
    now = now or datetime.now(UTC)
    try:
        return now - age
    except OverflowError:
        raise InvalidAge(f"an age of {age.days} days reaches before year 1") from None


@dataclass
class PruneReport:
    """What a prune deleted (or, for a dry run, would delete)."""

    cutoff: datetime
    dry_run: bool = False
    runs: int = 0
    steps: int = 0
    attempts: int = 0
    events: int = 0
    #: Sent outbox rows (events steps emitted, already published).
    outbox: int = 0
    #: Transactions that deleted something (0 for a dry run).
    batches: int = 0

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        text = (
            f"{verb} {self.runs} run(s) with {self.steps} step(s) and {self.attempts} "
            f"attempt(s), and {self.events} event(s)"
            + (f" and {self.outbox} sent emitted event(s)" if self.outbox else "")
            + f", older than {self.cutoff.isoformat(timespec='seconds')}"
        )
        return text if self.dry_run else f"{text}, in {self.batches} batch(es)"


# -- what is old ------------------------------------------------------------------------------


def _prunable(cutoff: datetime) -> ColumnElement[bool]:
    """A run (of the enclosing query) that may go: finished before `cutoff`, no open step."""
    open_step = (
        select(StepRun.id)
        .where(StepRun.run_id == Run.id, StepRun.status.in_(P.STEP_ACTIVE))
        .exists()
    )
    # finished_at >= created_at, so the created_at bound lets an index on it narrow the scan.
    return (
        Run.status.in_(P.RUN_FINAL)
        & (Run.created_at < cutoff)
        & (Run.finished_at < cutoff)
        & ~open_step
    )


def _unreferenced_events(cutoff: datetime, *, by_kept_runs_only: bool) -> ColumnElement[bool]:
    """An event received before `cutoff` that no run references (or, for a dry run's count,
    no run that would be kept)."""
    referencing = select(Run.id).where(Run.event_id == Event.id)
    if by_kept_runs_only:
        referencing = referencing.where(~_prunable(cutoff))
    return (Event.received_at < cutoff) & ~referencing.exists()


# -- the service ------------------------------------------------------------------------------


def prune(
    db: Engine,
    cutoff: datetime,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    progress: Callable[[PruneReport], None] | None = None,
) -> PruneReport:
    """Delete old finished runs, then old unreferenced events, in batches (module docstring).

    `progress`, if given, is called after each batch with the running totals.
    """
    if batch_size < 1:
        raise OrchestratorError("the batch size must be at least 1")
    report = PruneReport(cutoff=cutoff, dry_run=dry_run)
    if dry_run:
        return _count(db, report)
    while True:
        with db.begin() as conn:
            deleted = _delete_runs(conn, cutoff, batch_size, report)
        if not deleted:
            break
        _batch_done(report, progress)
    _drain(db, _delete_events, "events", cutoff, batch_size, report, progress)
    _drain(db, _delete_sent_outbox, "outbox", cutoff, batch_size, report, progress)
    return report


def _drain(
    db: Engine, delete: Callable[[Connection, datetime, int], int], counter: str, cutoff: datetime,
    batch_size: int, report: PruneReport, progress: Callable[[PruneReport], None] | None,
) -> None:
    """Run `delete` one batch per transaction until it deletes nothing, counting the rows
    in `report.<counter>` as it goes (so `progress` sees them)."""
    while True:
        with db.begin() as conn:
            deleted = delete(conn, cutoff, batch_size)
        if not deleted:
            return
        setattr(report, counter, getattr(report, counter) + deleted)
        _batch_done(report, progress)


def _batch_done(report: PruneReport, progress: Callable[[PruneReport], None] | None) -> None:
    report.batches += 1
    log.debug("prune batch %d: %s", report.batches, report.summary())
    if progress is not None:
        progress(report)


def _delete_runs(conn: Connection, cutoff: datetime, limit: int, report: PruneReport) -> int:
    """One batch: lock up to `limit` old runs (skipping locked ones) and delete them, their
    steps and their attempts. Returns how many runs went."""
    ids = conn.scalars(
        select(Run.id)
        .where(_prunable(cutoff))
        .limit(limit)
        .with_for_update(skip_locked=True, of=Run)
    ).all()
    if not ids:
        return 0
    steps_of_batch = select(StepRun.id).where(StepRun.run_id.in_(ids))
    report.attempts += conn.execute(delete(Attempt).where(Attempt.step_id.in_(steps_of_batch))).rowcount
    report.steps += conn.execute(delete(StepRun).where(StepRun.run_id.in_(ids))).rowcount
    deleted = conn.execute(delete(Run).where(Run.id.in_(ids))).rowcount
    report.runs += deleted
    return deleted


def _delete_events(conn: Connection, cutoff: datetime, limit: int) -> int:
    """One batch: lock up to `limit` old events no run references and delete them."""
    ids = conn.scalars(
        select(Event.id)
        .where(_unreferenced_events(cutoff, by_kept_runs_only=False))
        .limit(limit)
        .with_for_update(skip_locked=True, of=Event)
    ).all()
    if not ids:
        return 0
    return conn.execute(delete(Event).where(Event.id.in_(ids))).rowcount


def _delete_sent_outbox(conn: Connection, cutoff: datetime, limit: int) -> int:
    """One batch: lock up to `limit` outbox rows sent before `cutoff` and delete them."""
    ids = conn.scalars(
        select(OutboxRow.id)
        .where(OutboxRow.sent_at < cutoff)
        .limit(limit)
        .with_for_update(skip_locked=True, of=OutboxRow)
    ).all()
    if not ids:
        return 0
    return conn.execute(delete(OutboxRow).where(OutboxRow.id.in_(ids))).rowcount


def _count(db: Engine, report: PruneReport) -> PruneReport:
    """A dry run: what `prune` would delete now, counted in one read-only pass."""
    cutoff = report.cutoff
    with db.connect() as conn:
        old_runs = select(Run.id).where(_prunable(cutoff))
        old_steps = select(StepRun.id).where(StepRun.run_id.in_(old_runs))
        report.runs = conn.scalar(select(func.count()).select_from(old_runs.subquery())) or 0
        report.steps = conn.scalar(select(func.count()).select_from(old_steps.subquery())) or 0
        report.attempts = conn.scalar(
            select(func.count()).select_from(Attempt).where(Attempt.step_id.in_(old_steps))
        ) or 0
        report.events = conn.scalar(
            select(func.count())
            .select_from(Event)
            .where(_unreferenced_events(cutoff, by_kept_runs_only=True))
        ) or 0
        report.outbox = conn.scalar(
            select(func.count()).select_from(OutboxRow).where(OutboxRow.sent_at < cutoff)
        ) or 0
        conn.rollback()
    return report
