"""Aggregate read queries for the dashboard overview and the Prometheus metrics.

Every aggregate runs in the database (GROUP BY, conditional sums), so the web process
never loads rows it only counts. Two expressions differ by dialect: truncating a
timestamp to the hour and the seconds between two timestamps; both are built here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from .. import waits as W
from .models import Attempt, Event, OutboxRow, Run, StepRun, Wait


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _hour(session: Session, column: Any) -> ColumnElement[Any]:
    """`column` truncated to the hour, in UTC."""
    if _postgres(session):
        return func.date_trunc("hour", func.timezone("UTC", column))
    return func.strftime("%Y-%m-%d %H:00:00", column)


def _seconds(session: Session, end: Any, start: Any) -> ColumnElement[Any]:
    """Seconds from `start` to `end`, never negative (clock skew counts as zero)."""
    if _postgres(session):
        raw: ColumnElement[Any] = func.extract("epoch", end - start)
    else:
        raw = (func.julianday(end) - func.julianday(start)) * 86400.0
    return case((raw < 0, 0.0), else_=raw)


def _as_utc(value: Any) -> datetime:
    """A bucket value as an aware UTC datetime (SQLite returns strings)."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_counts_since(session: Session, since: datetime) -> dict[str, int]:
    """Runs created since `since`, counted by status."""
    rows = session.execute(
        select(Run.status, func.count()).where(Run.created_at >= since).group_by(Run.status)
    )
    return {status: count for status, count in rows}


def hourly_runs(session: Session, since: datetime) -> list[tuple[datetime, str, int]]:
    """(hour, status, runs created in that hour) since `since`, oldest hour first."""
    hour = _hour(session, Run.created_at).label("hour")
    rows = session.execute(
        select(hour, Run.status, func.count())
        .where(Run.created_at >= since)
        .group_by(hour, Run.status)
        .order_by(hour)
    )
    return [(_as_utc(h), status, count) for h, status, count in rows]


def runs_by_workflow_status(session: Session) -> list[tuple[str, str, int]]:
    rows = session.execute(
        select(Run.workflow, Run.status, func.count()).group_by(Run.workflow, Run.status)
    )
    return [(w, s, n) for w, s, n in rows]


def steps_by_workflow_status(session: Session) -> list[tuple[str, str, int]]:
    rows = session.execute(
        select(Run.workflow, StepRun.status, func.count())
        .join(Run, Run.id == StepRun.run_id)
        .group_by(Run.workflow, StepRun.status)
    )
    return [(w, s, n) for w, s, n in rows]


def events_by_outcome(session: Session) -> dict[str, int]:
    rows = session.execute(select(Event.outcome, func.count()).group_by(Event.outcome))
    return {outcome: count for outcome, count in rows}


def outbox_backlog(session: Session) -> tuple[int, datetime | None]:
    """Unsent outbox rows and when the oldest was written (None: the outbox is empty); one
    read of the partial index on unsent rows, however many sent rows are kept."""
    table = OutboxRow.__table__
    count, oldest = session.execute(
        select(func.count(), func.min(table.c.created_at)).where(table.c.sent_at.is_(None))
    ).one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)  # SQLite hands back naive datetimes, written in UTC
    return int(count or 0), oldest


def open_waits(session: Session, now: datetime) -> tuple[dict[str, int], int]:
    """Open waits by kind, and how many of them have a timer due (`due_at <= now`) that the
    recovery process has not fired yet; both read the partial indexes on open waits."""
    table = Wait.__table__
    is_open = table.c.status == W.OPEN
    by_kind = {kind: count for kind, count in session.execute(
        select(table.c.kind, func.count()).where(is_open).group_by(table.c.kind)
    )}
    due = session.scalar(
        select(func.count()).where(is_open, table.c.due_at.is_not(None), table.c.due_at <= now)
    )
    return by_kind, int(due or 0)


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (`counts[i]` observations <= `bounds[i]`), total and sum."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum: float

    def __add__(self, other: Histogram) -> Histogram:
        if other.bounds != self.bounds:
            raise ValueError("cannot add histograms with different buckets")
        return Histogram(
            self.bounds,
            tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            self.count + other.count,
            self.sum + other.sum,
        )

    @classmethod
    def empty(cls, bounds: Sequence[float]) -> Histogram:
        return cls(tuple(bounds), (0,) * len(bounds), 0, 0.0)


def _histogram(session: Session, seconds: Any, query: Any, bounds: Sequence[float]) -> Histogram:
    """One pass: each duration computed once, put in its bucket, buckets counted by GROUP BY."""
    rows = query.with_only_columns(seconds.label("seconds")).subquery()
    bucket = case(
        *[(rows.c.seconds <= bound, i) for i, bound in enumerate(bounds)], else_=len(bounds)
    ).label("bucket")
    per_bucket = [0] * (len(bounds) + 1)
    total = 0.0
    for index, count, seconds_sum in session.execute(
        select(bucket, func.count(), func.sum(rows.c.seconds)).group_by(bucket)
    ):
        per_bucket[index] += count
        total += float(seconds_sum or 0.0)
    cumulative = list(accumulate(per_bucket))
    return Histogram(
        bounds=tuple(bounds), counts=tuple(cumulative[:-1]), count=cumulative[-1], sum=total
    )


def _window(column: Any, after: datetime, until: datetime) -> list[Any]:
    """Rows whose `column` is in (after, until]: each scrape adds only what is new."""
    return [column > after, column <= until]


def event_to_run_histogram(
    session: Session, bounds: Sequence[float], after: datetime, until: datetime
) -> Histogram:
    """Seconds from an event's Kafka timestamp to the creation of the run it started.

    Counts runs created in (after, until].
    """
    seconds = _seconds(session, Run.created_at, Event.kafka_timestamp)
    query = (
        select(Run.id)
        .join(Event, Event.id == Run.event_id)
        .where(Event.kafka_timestamp.is_not(None), *_window(Run.created_at, after, until))
    )
    return _histogram(session, seconds, query, bounds)


def queue_wait_histogram(
    session: Session, bounds: Sequence[float], after: datetime, until: datetime
) -> Histogram:
    """Seconds a step waited from being queued to being started, for claims in (after, until].

    A claim is an attempt starting; the step row holds when its latest attempt was queued,
    so an attempt already followed by a retry when the window is read is not counted (its
    retry is). A retry is queued with its backoff delay, so its wait includes that delay.
    """
    seconds = _seconds(session, StepRun.started_at, StepRun.queued_at)
    query = (
        select(Attempt.id)
        .join(StepRun, StepRun.id == Attempt.step_id)
        .where(
            Attempt.number == StepRun.attempts,
            StepRun.queued_at.is_not(None),
            StepRun.started_at >= StepRun.queued_at,
            *_window(Attempt.started_at, after, until),
        )
    )
    return _histogram(session, seconds, query, bounds)


def execution_histogram(
    session: Session, bounds: Sequence[float], after: datetime, until: datetime
) -> Histogram:
    """Seconds each attempt finished in (after, until] ran, from start to finish."""
    seconds = _seconds(session, Attempt.finished_at, Attempt.started_at)
    query = select(Attempt.id).where(*_window(Attempt.finished_at, after, until))
    return _histogram(session, seconds, query, bounds)
