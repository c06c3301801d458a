"""`orchestrator prune`: old finished runs and unreferenced events go, in batches; active
runs and what they reference stay. On PostgreSQL and on SQLite."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, insert, select, text

from orchestrator.db.migrate import upgrade
from orchestrator.db.models import Attempt, Event, Run, StepRun
from orchestrator.db.session import create_db_engine
from orchestrator.retention import cutoff_for, parse_age, prune
from tests.fixtures.config import settings_env
from tests.integration.test_cli import cli

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)
ANCIENT = NOW - timedelta(days=400)
RECENT = NOW - timedelta(days=1)


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request, tmp_path: Path) -> Engine:
    if request.param == "postgresql":
        pg_url = request.getfixturevalue("pg_url")
        request.getfixturevalue("clean_state")
        engine = create_db_engine(pg_url)
    else:
        url = f"sqlite:///{tmp_path / 'state.db'}"
        upgrade(url)
        engine = create_db_engine(url)
    yield engine
    engine.dispose()


@dataclass
class History:
    """Rows written by `seed`, by what retention must do with them."""

    doomed_runs: set[uuid.UUID] = field(default_factory=set)
    kept_runs: set[uuid.UUID] = field(default_factory=set)
    doomed_events: set[int] = field(default_factory=set)
    kept_events: set[int] = field(default_factory=set)
    doomed_steps: int = 0
    doomed_attempts: int = 0


def _event(conn, offset: int, received_at: datetime, outcome: str = "matched") -> int:
    return conn.execute(
        insert(Event).values(
            topic="orders", partition=0, offset=offset, key=None, headers=[], payload={"n": offset},
            received_at=received_at, outcome=outcome,
        ).returning(Event.id)
    ).scalar_one()


def _run(conn, status: str, created: datetime, finished: datetime | None, event_id: int | None,
         steps: list[tuple[str, int]]) -> tuple[uuid.UUID, int]:
    """A run with steps given as (status, attempts); returns its id and its attempt count."""
    run_id = uuid.uuid4()
    conn.execute(insert(Run).values(
        id=run_id, workflow="diamond", status=status, input={}, created_at=created,
        started_at=created if status != "pending" else None, finished_at=finished, event_id=event_id,
    ))
    attempts = 0
    for index, (step_status, tries) in enumerate(steps):
        step_id = conn.execute(insert(StepRun).values(
            run_id=run_id, name=f"s{index}", status=step_status, queue="orchestrator",
            attempts=tries, max_attempts=3,
        ).returning(StepRun.id)).scalar_one()
        for number in range(1, tries + 1):
            conn.execute(insert(Attempt).values(
                step_id=step_id, number=number, started_at=created, finished_at=finished,
                status="running" if step_status == "running" and number == tries else "failed",
                logs=[],
            ))
        attempts += tries
    return run_id, attempts


def seed(db: Engine, finished_runs: int = 60) -> History:
    h = History()
    offset = iter(range(10_000))
    with db.begin() as conn:
        # Old finished runs, most started by an old event: they go, with their events.
        for i in range(finished_runs):
            status = ("succeeded", "failed", "cancelled")[i % 3]
            event_id = _event(conn, next(offset), OLD) if i % 4 else None
            run_id, attempts = _run(conn, status, OLD, OLD + timedelta(hours=1), event_id,
                                    [("succeeded", 1), ("failed" if status == "failed" else "succeeded", 2)])
            h.doomed_runs.add(run_id)
            h.doomed_steps += 2
            h.doomed_attempts += attempts
            if event_id:
                h.doomed_events.add(event_id)
        # Old events that started nothing (ignored, rejected): they go.
        for _ in range(25):
            h.doomed_events.add(_event(conn, next(offset), OLD, outcome="ignored"))
        # Active runs, however old, stay, and so do the events that started them.
        for status, steps in (("pending", [("pending", 0)]), ("running", [("running", 1), ("pending", 0)])):
            event_id = _event(conn, next(offset), ANCIENT)
            h.kept_runs.add(_run(conn, status, ANCIENT, None, event_id, steps)[0])
            h.kept_events.add(event_id)
        # A cancelled run whose step is still finishing its attempt stays until it has.
        h.kept_runs.add(_run(conn, "cancelled", OLD, OLD, None, [("running", 1)])[0])
        # A run created long ago that finished recently stays, with its old event.
        event_id = _event(conn, next(offset), OLD)
        h.kept_runs.add(_run(conn, "succeeded", OLD, RECENT, event_id, [("succeeded", 1)])[0])
        h.kept_events.add(event_id)
        # Recent runs and events stay.
        h.kept_runs.add(_run(conn, "succeeded", RECENT, RECENT, None, [("succeeded", 1)])[0])
        for _ in range(3):
            h.kept_events.add(_event(conn, next(offset), RECENT, outcome="ignored"))
    return h


def table_counts(db: Engine) -> dict[str, int]:
    with db.connect() as conn:
        return {t.__tablename__: conn.scalar(select(func.count()).select_from(t)) for t in (Run, StepRun, Attempt, Event)}


def test_prune_deletes_old_finished_runs_with_their_steps_and_attempts_and_keeps_active_ones(db):
    history = seed(db)
    before = table_counts(db)
    cutoff = cutoff_for(parse_age("30d"))

    preview = prune(db, cutoff, dry_run=True)
    assert table_counts(db) == before, "a dry run deletes nothing"
    assert (preview.runs, preview.steps, preview.attempts, preview.events) == (
        len(history.doomed_runs), history.doomed_steps, history.doomed_attempts, len(history.doomed_events)
    )

    done = prune(db, cutoff, batch_size=7)
    assert (done.runs, done.steps, done.attempts, done.events) == (
        preview.runs, preview.steps, preview.attempts, preview.events
    )
    # Every batch is its own transaction of at most 7 runs or 7 events.
    assert done.batches == -(-len(history.doomed_runs) // 7) + -(-len(history.doomed_events) // 7)

    with db.connect() as conn:
        runs = set(conn.scalars(select(Run.id)))
        events = set(conn.scalars(select(Event.id)))
        orphans = conn.scalar(text(
            "SELECT count(*) FROM steps s WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = s.run_id)"
        ))
        kept_steps = conn.scalar(select(func.count()).select_from(StepRun))
    assert runs == history.kept_runs
    assert events == history.kept_events
    assert orphans == 0
    after = table_counts(db)
    assert after["steps"] == before["steps"] - history.doomed_steps == kept_steps
    assert after["attempts"] == before["attempts"] - history.doomed_attempts

    again = prune(db, cutoff, batch_size=7)
    assert (again.runs, again.events, again.batches) == (0, 0, 0)


def test_a_run_locked_by_another_transaction_is_skipped_not_waited_for(pg_url, clean_state):
    db = create_db_engine(pg_url)
    history = seed(db, finished_runs=12)
    held = sorted(history.doomed_runs)[0]
    holder = create_engine(pg_url)
    result: dict = {}
    try:
        with holder.connect() as conn:
            # What a retry of that run does first: lock its row.
            conn.execute(text("SELECT id FROM runs WHERE id = :id FOR UPDATE"), {"id": held})
            worker = threading.Thread(
                target=lambda: result.update(report=prune(db, cutoff_for(parse_age("30d")), batch_size=5))
            )
            worker.start()
            worker.join(60)  # a hang guard: SKIP LOCKED never waits on the held row
            assert not worker.is_alive(), "prune waited for a locked run"
            conn.rollback()
        report = result["report"]
        assert report.runs == len(history.doomed_runs) - 1
        with db.connect() as conn:
            assert set(conn.scalars(select(Run.id))) == history.kept_runs | {held}
        # The next prune takes it.
        assert prune(db, cutoff_for(parse_age("30d"))).runs == 1
    finally:
        holder.dispose()
        db.dispose()


def test_prune_command_reports_counts_and_refuses_a_bad_age(runtime, settings, redis_url):
    history = seed(runtime.db, finished_runs=9)
    env = settings_env(settings, redis_url)

    dry = cli(env, "prune", "--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"would delete 9 run(s) with 18 step(s) and {history.doomed_attempts} attempt(s)")

    done = cli(env, "prune", "--older-than", "30d", "--batch-size", "4")
    assert done.returncode == 0, done.stderr
    events = len(history.doomed_events)
    assert done.stdout.startswith(
        f"deleted 9 run(s) with 18 step(s) and {history.doomed_attempts} attempt(s), and {events} event(s)"
    )
    assert done.stdout.strip().endswith(f"in {3 + -(-events // 4)} batch(es)")

    bad = cli(env, "prune", "--older-than", "a month")
    assert bad.returncode == 1
    assert "age 'a month' is not understood" in bad.stderr and "Traceback" not in bad.stderr
