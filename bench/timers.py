"""10,000 durable timers due within one minute: how late they fire, beside 100 timers.

One script, a fresh PostgreSQL database, Redis, one `orchestrator worker` (2 processes) with
its recovery process, which fires due timers every ORCHESTRATOR_TIMER_INTERVAL (0.25 s)
under the sweeper's lock. The timers are `flow.sleep(until=...)` nodes of `bench-sleeper`
runs (the sleep, then a no-op step `wake` on the worker), started in bulk the way the Kafka
intake starts runs (`plan_run` + `insert_runs`, 1,000 a transaction), each sleeping until
its own moment; the moments are spread evenly over the window, which begins once every run
is written.

Lateness of a timer, three ways:

* fired: `waits.closed_at - due_at` (the firing transaction's clock, read when it began);
* seen: when this script saw the wait closed (committed), polling every 20 ms, - due_at;
  the figure the target is about (p95 <= 1 s); it errs high by up to one poll;
* wake started: the `wake` attempt's `started_at - due_at` (adds Celery and the worker,
  which runs 10,000 steps meanwhile).

The baseline is the same with 100 timers over 10 seconds (the same density per second is
not the point: it shows the floor, one timer tick). Needs PostgreSQL and Redis on localhost.

    python bench/timers.py [--timers 10000] [--window 60] [--baseline 100] [--baseline-window 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import fresh_database, worker_env  # noqa: E402
from bench.engine_vs_celery import start, stop  # noqa: E402
from bench.waits import percentile  # noqa: E402
from orchestrator.events import insert_runs  # noqa: E402
from orchestrator.runtime import Runtime  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

DB_NAME = "orchestrator_bench_timers"
BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/10")
#: Seconds of lateness, p95 of "seen", at most.
TARGET_P95 = 1.0
#: Seconds between two looks of the observer.
POLL = 0.02
_EMPTY = "TRUNCATE attempts, steps, waits, wait_keys, runs, events, outbox RESTART IDENTITY CASCADE"


def start_sleepers(rt: Runtime, timers: int, window: float) -> datetime:
    """Start `timers` runs whose sleeps end evenly over `window` seconds from a moment just
    after the last is written (estimated from the first thousand); returns that moment."""
    workflow = rt.registry.get("bench-sleeper")
    per_tx = 1000
    began = time.monotonic()
    first = datetime.now(UTC)

    def write(numbers: range, t0: datetime) -> None:
        planned = [rt.engine.plan_run(workflow, {"due": (t0 + timedelta(seconds=n * window / timers)).isoformat()})
                   for n in numbers]
        with rt.engine.transaction() as (session, outbox):
            insert_runs(rt.engine, session, outbox, planned)

    # The first batch sleeps an hour (then is moved, below): it tells how long writing takes.
    write(range(min(per_tx, timers)), first + timedelta(hours=1))
    per_batch = time.monotonic() - began
    t0 = datetime.now(UTC) + timedelta(seconds=3 + 2 * per_batch * (timers / per_tx))
    with rt.db.begin() as conn:  # the first batch's moments, as if written with t0
        conn.execute(text("UPDATE waits SET due_at = due_at - (:shift * interval '1 second')"),
                     {"shift": (first + timedelta(hours=1) - t0).total_seconds()})
    for low in range(per_tx, timers, per_tx):
        write(range(low, min(timers, low + per_tx)), t0)
    if datetime.now(UTC) >= t0:
        raise SystemExit("writing the runs took longer than estimated; the first timers were due before "
                         "all were written (a busy machine?); run again")
    return t0


def observe(rt: Runtime, timers: int, deadline: float) -> dict[int, float]:
    """When each wait was first seen closed (wall clock), by wait id. Timers fire roughly in
    id order, so each look reads from the lowest id not yet seen."""
    seen: dict[int, float] = {}
    low = 1
    with rt.db.connect() as conn:
        while len(seen) < timers and time.monotonic() < deadline:
            ids = conn.scalars(
                text("SELECT id FROM waits WHERE id >= :low AND status <> 'open' ORDER BY id LIMIT 5000"),
                {"low": low},
            ).all()
            conn.rollback()
            moment = time.time()
            for wait_id in ids:
                seen.setdefault(wait_id, moment)
            while low in seen:
                low += 1
            time.sleep(POLL)
    return seen


def measure(rt: Runtime, timers: int, window: float) -> dict[str, list[float]]:
    """Lateness in seconds (fired, seen, wake started) of `timers` timers over `window` s."""
    with rt.db.begin() as conn:
        conn.execute(text(_EMPTY))
    t0 = start_sleepers(rt, timers, window)
    print(f"  {timers:,} runs written; timers due from {t0:%H:%M:%S} for {window:g} s", flush=True)
    found: dict[int, float] = {}
    watcher = threading.Thread(target=lambda: found.update(observe(rt, timers, time.monotonic() + window + 240)))
    watcher.start()
    watcher.join()
    if len(found) < timers:
        raise SystemExit(f"only {len(found)} of {timers} timers fired within 4 minutes of the last one's moment")
    deadline = time.monotonic() + 240
    with rt.db.connect() as conn:
        while conn.scalar(text("SELECT count(*) FROM runs WHERE status = 'succeeded'")) < timers:
            conn.rollback()
            if time.monotonic() > deadline:
                raise SystemExit("the wake steps did not all finish within 4 minutes")
            time.sleep(0.2)
        rows = conn.execute(text(
            "SELECT w.id, extract(epoch FROM w.due_at), extract(epoch FROM w.closed_at - w.due_at), "
            "extract(epoch FROM a.started_at - w.due_at) "
            "FROM waits w JOIN steps s ON s.run_id = w.run_id AND s.name = 'wake' "
            "JOIN attempts a ON a.step_id = s.id AND a.number = 1 WHERE w.status = 'fired'"
        )).all()
    if len(rows) != timers:
        raise SystemExit(f"{len(rows)} of {timers} sleeps fired and woke (the others: failed? cancelled?)")
    return {
        "fired": [float(r[2]) for r in rows],
        "seen": [found[r[0]] - float(r[1]) for r in rows],
        "wake started": [float(r[3]) for r in rows],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timers", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=60.0, help="seconds the timers are due within")
    parser.add_argument("--baseline", type=int, default=100)
    parser.add_argument("--baseline-window", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    redis.Redis.from_url(BROKER).flushdb()
    settings = Settings(database_url=fresh_database(DB_NAME), broker_url=BROKER, workflows=("bench.wait_flows",))
    logs = Path(os.environ.get("BENCH_LOGS", "/tmp/orchestrator-bench"))
    logs.mkdir(parents=True, exist_ok=True)
    worker = start(
        [sys.executable, "-m", "orchestrator", "--log-level=WARNING", "worker",
         f"--concurrency={args.concurrency}", "--hostname=timers@bench"],
        worker_env(settings), logs / "timers-worker.log", "worker serving queues",
    )
    rt = Runtime(settings)
    try:
        time.sleep(2)  # let the worker's pool and its recovery process start
        print(f"baseline: {args.baseline} timers over {args.baseline_window:g} s", flush=True)
        base = measure(rt, args.baseline, args.baseline_window)
        print(f"load: {args.timers:,} timers over {args.window:g} s", flush=True)
        load = measure(rt, args.timers, args.window)
    finally:
        stop(worker)
        rt.close()
        redis.Redis.from_url(BROKER).flushdb()

    print()
    print(f"timer lateness (s), fired by the worker's recovery process (tick {settings.timer_interval:g} s), "
          f"{args.concurrency} worker processes")
    print(f"  {'':34}{'p50':>8}{'p95':>8}{'max':>8}")
    for found, timers, window in ((base, args.baseline, args.baseline_window),
                                  (load, args.timers, args.window)):
        for what, values in found.items():
            name = f"{timers:,} over {window:g} s, {what}"
            print(f"  {name:34}{statistics.median(values):8.3f}{percentile(values, 0.95):8.3f}{max(values):8.3f}")
    p95, floor = percentile(load["seen"], 0.95), percentile(base["seen"], 0.95)
    print(f"  ratio p95 seen, load / baseline: {p95 / floor:.2f}  "
          f"(target p95 <= {TARGET_P95:g} s: {'meets' if p95 <= TARGET_P95 else 'MISSES'})")


if __name__ == "__main__":
    main()
