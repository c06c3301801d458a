"""Admission and bulk cancel under a concurrency limit cost the same whatever the backlog."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event, select

from orchestrator import bulk
from orchestrator.bulk import RunFilter, bulk_action
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


def test_bulk_cancel_of_a_backlog_works_in_short_batches_and_starts_none_of_them(runtime, monkeypatch):
    monkeypatch.setattr(bulk, "CANCEL_BATCH", 40)
    ids = start_backlog(runtime, "per-customer", "k", BACKLOG)
    commits: list[int] = []

    def committed(conn) -> None:  # noqa: ANN001
        commits.append(1)

    event.listen(runtime.db, "commit", committed)
    try:
        with rows_read_from_runs(runtime) as counts:
            result = bulk_action(
                runtime.engine, "cancel", where=RunFilter(workflow="per-customer"), limit=BACKLOG - 1
            )
    finally:
        event.remove(runtime.db, "commit", committed)
    assert (result.matched, result.touched, result.remaining) == (BACKLOG - 1, BACKLOG - 1, True)
    assert sorted(result.touched_ids) == sorted(ids[1:])  # newest first: all but the oldest
    assert 4 <= len(commits) <= 8, f"{len(commits)} transactions for 4 batches of at most 40 runs"
    assert sum(counts) <= 3 * BACKLOG, f"cancelling {BACKLOG - 1} runs read {sum(counts)} rows of runs"
    assert statuses(runtime, ids[:1]) == ["running"]  # the oldest still holds its slot
    with runtime.sessions() as session:
        started = session.scalars(
            select(Run.id).where(Run.concurrency_key == "k", Run.started_at.is_not(None))
        ).all()
    assert [str(i) for i in started] == [ids[0]], "no cancelled run was started on the way"


def test_bulk_cancel_by_ids_reports_unknown_and_finished_runs(runtime):
    ids = start_backlog(runtime, "per-customer", "k", 3)
    runtime.engine.cancel_run(ids[1])
    unknown = "00000000-0000-4000-8000-000000000000"
    result = bulk_action(runtime.engine, "cancel", ids=[*ids, unknown, "not-a-uuid"])
    assert (result.matched, result.touched) == (3, 2)
    assert sorted(result.touched_ids) == sorted([ids[0], ids[2]])
    assert result.not_found == [unknown, "not-a-uuid"]
    assert statuses(runtime, ids) == ["cancelled"] * 3


def test_the_recovery_sweep_finds_a_key_with_a_free_slot_behind_many_busy_keys(runtime):
    from sqlalchemy import insert

    from orchestrator import concurrency as C
    from orchestrator.db.models import StepRun

    engine = runtime.engine
    workflow = engine.registry.get("per-customer")
    for key in ("a", "b", "c"):  # busy keys, each with a run waiting
        start_backlog(runtime, "per-customer", key, 2)
    # A run whose admission was lost (a crash between commit and admission): its key is free.
    stranded = engine.plan_run(workflow, {"customer": "z"})
    with runtime.sessions() as session, session.begin():
        session.execute(insert(Run.__table__), [stranded.run])
        session.execute(insert(StepRun.__table__), stranded.steps)
    with runtime.sessions() as session:
        assert C.workflow_keys_waiting(session, workflow, limit=2) == ["z"]
    assert engine.admit_waiting() == 1
    assert statuses(runtime, [str(stranded.run["id"])]) == ["running"]
