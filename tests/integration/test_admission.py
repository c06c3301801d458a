"""Admission and bulk cancel under a concurrency limit cost the same whatever the backlog."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event, select

from orchestrator.db.models import Run

BACKLOG = 150


@contextmanager
def rows_read_from_runs(runtime) -> Iterator[list[int]]:
    """Rows each SELECT on `runs` returns while the block runs (one entry per statement)."""
    counts: list[int] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT") and "FROM runs" in statement:
            counts.append(max(cursor.rowcount, 0))

    event.listen(runtime.db, "after_cursor_execute", count)
    try:
        yield counts
    finally:
        event.remove(runtime.db, "after_cursor_execute", count)


def statuses(runtime, ids: list[str]) -> list[str]:
    with runtime.sessions() as session:
        by_id = dict(session.execute(select(Run.id, Run.status).where(Run.id.in_(ids))).all())
    return [by_id[Run.id.type.python_type(i)] for i in ids]


def start_backlog(runtime, workflow: str, key: str, count: int) -> list[str]:
    return [runtime.engine.start_run(workflow, {"customer": key}) for _ in range(count)]


def test_a_freed_slot_goes_to_the_oldest_pending_run_reading_a_bounded_number_of_rows(runtime):
    ids = start_backlog(runtime, "per-customer", "k", BACKLOG)
    assert statuses(runtime, ids[:2]) == ["running", "pending"]
    with rows_read_from_runs(runtime) as counts:
        assert runtime.engine.cancel_run(ids[0])
    assert statuses(runtime, ids[:3]) == ["cancelled", "running", "pending"]
    assert set(statuses(runtime, ids[2:])) == {"pending"}
    assert sum(counts) <= 10, f"admission read {sum(counts)} rows of runs for a limit of 1: {counts}"


def test_starting_a_run_behind_a_backlog_reads_a_bounded_number_of_rows(runtime):
    start_backlog(runtime, "per-customer", "k", BACKLOG)
    with rows_read_from_runs(runtime) as counts:
        late = runtime.engine.start_run("per-customer", {"customer": "k"})
    assert statuses(runtime, [late]) == ["pending"]
    assert sum(counts) <= 5, f"admission read {sum(counts)} rows of runs for a limit of 1: {counts}"


def test_cancel_newest_still_cancels_every_run_over_the_limit(runtime):
    first, second = start_backlog(runtime, "newest-loses", "k", 2)
    assert statuses(runtime, [first, second]) == ["running", "cancelled"]


def test_cancel_in_progress_still_lets_the_newest_run_win(runtime):
    old, new = start_backlog(runtime, "latest-wins", "k", 2)
    assert statuses(runtime, [old, new]) == ["cancelled", "running"]
