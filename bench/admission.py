"""Admission and bulk cancel under `Concurrency(limit=1)` with a backlog of pending runs.

Starts `--runs` runs on a key with no backlog and on a key with `--pending` pending runs,
in alternating rounds, and prints both start rates and their ratio (target: the backlog's
rate >= 0.8x the empty key's). Then cancels `--pending` runs with one bulk action and prints
its time (target: under 10 s). No workers and no broker: messages are only recorded, so the
figures are the engine's and the database's. Needs PostgreSQL on localhost.

    python bench/admission.py [--runs 300] [--pending 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from sqlalchemy import func, insert, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import fresh_database  # noqa: E402
from bench.flows import limited  # noqa: E402
from orchestrator.bulk import RunFilter, bulk_action  # noqa: E402
from orchestrator.db.models import Run, StepRun  # noqa: E402
from orchestrator.db.session import create_db_engine, session_factory  # noqa: E402
from orchestrator.dispatch import RecordingDispatcher  # noqa: E402
from orchestrator.engine import WorkflowEngine  # noqa: E402
from orchestrator.registry import Registry  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

DB_NAME = "orchestrator_bench_admission"
#: Figures issue 9 measured before the fix, printed beside ours.
BASELINE_EMPTY_RATE = 272.0
BASELINE_BACKLOG_RATE = 34.0
BASELINE_BULK_CANCEL_S = 160.0
TARGET_RATIO = 0.8
TARGET_BULK_CANCEL_S = 10.0


def start_rate(engine: WorkflowEngine, key: str, runs: int) -> float:
    """Runs started per second on `key` (all but the first wait for its slot)."""
    began = time.perf_counter()
    for _ in range(runs):
        engine.start_run(limited.name, {"customer": key})
    return runs / (time.perf_counter() - began)


def seed_backlog(engine: WorkflowEngine, key: str, pending: int) -> None:
    """One running run of `key` and `pending` runs waiting behind it, inserted in bulk."""
    engine.start_run(limited.name, {"customer": key})
    for offset in range(0, pending, 1000):
        planned = [engine.plan_run(limited, {"customer": key}) for _ in range(min(1000, pending - offset))]
        with engine.sessions() as session, session.begin():
            session.execute(insert(Run.__table__), [p.run for p in planned])
            session.execute(insert(StepRun.__table__), [s for p in planned for s in p.steps])


def count_pending(engine: WorkflowEngine, key: str) -> int:
    with engine.sessions() as session:
        return session.scalar(
            select(func.count()).select_from(Run).where(Run.concurrency_key == key, Run.status == "pending")
        ) or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    settings = Settings(database_url=fresh_database(DB_NAME), workflows=("bench.flows",))
    db = create_db_engine(settings.database_url)
    engine = WorkflowEngine(session_factory(db), Registry([limited]), RecordingDispatcher(), settings)

    seed_backlog(engine, "backlog", args.pending)
    start_rate(engine, "warm-up", 50)
    empty, backlog = [], []
    for round_ in range(args.rounds):
        empty.append(start_rate(engine, f"empty-{round_}", args.runs))
        backlog.append(start_rate(engine, "backlog", args.runs))
    waiting = count_pending(engine, "backlog")
    rate_empty, rate_backlog = statistics.median(empty), statistics.median(backlog)
    ratio = rate_backlog / rate_empty
    print(f"start rate, no backlog:              {rate_empty:7.0f} runs/s   (issue 9: {BASELINE_EMPTY_RATE:.0f}/s)")
    print(
        f"start rate, {waiting:,} pending:       {rate_backlog:7.0f} runs/s   "
        f"(issue 9: {BASELINE_BACKLOG_RATE:.0f}/s with 10,000)"
    )
    print(
        f"ratio:                               {ratio:7.2f}          "
        f"(issue 9: {BASELINE_BACKLOG_RATE / BASELINE_EMPTY_RATE:.2f}; target >= {TARGET_RATIO})"
    )

    began = time.perf_counter()
    result = bulk_action(
        engine, "cancel", where=RunFilter(workflow=limited.name, status="pending"), limit=args.pending
    )
    took = time.perf_counter() - began
    print(
        f"bulk cancel of {result.touched:,} runs:        {took:7.1f} s        "
        f"(issue 9: {BASELINE_BULK_CANCEL_S:.0f} s; target < {TARGET_BULK_CANCEL_S:.0f} s)"
    )
    db.dispose()
    engine.hot_path.dispose()
    ok = ratio >= TARGET_RATIO and took < TARGET_BULK_CANCEL_S
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
