"""A map of 10,000 no-op items through the orchestrator vs 10,000 plain Celery no-op tasks.

Same machine, same Redis broker, same delivery settings (acks late, prefetch 1, prefork
pool), same number of worker processes, same script, rounds alternating ABBA; prints both
times, per item, and their ratio against the 3x target of issue 12. The plain figure is
from the first send to the last task done (each task counts itself in Redis); the map's
from `start_run` (which expands the map: 10,000 item rows and messages) to the run
`succeeded` (its map settled after the last item). Needs PostgreSQL and Redis on localhost.

While the map runs, a sampler reads every 10 ms which row locks are held on `runs`
(`pgrowlocks`) and which backends of the database wait for a lock (`pg_stat_activity`):
item successes take no lock on the run's row, so the first should be ~0 (the map's start
and its one settlement) and the second near 0 for the item statements.

    python bench/maps.py [--items 10000] [--rounds 2] [--concurrency 2] [--limited] [--profile]

--limited runs `bench-map-limited` (concurrency=20: each item's success queues the next);
--profile has each worker pool process profile itself with cProfile (see bench/map_flows.py)
and prints the top of the merged profile.
"""

from __future__ import annotations

import argparse
import os
import pstats
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis
from sqlalchemy import Engine, create_engine, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# bench.plain_celery reads the broker when imported: the same one as the workers.
os.environ.setdefault("BENCH_BROKER_URL", "redis://127.0.0.1:6379/12")

from bench.common import fresh_database, worker_env  # noqa: E402
from bench.engine_vs_celery import start, stop, wait_until  # noqa: E402
from bench.plain_celery import app as plain_app  # noqa: E402
from bench.plain_celery import last  # noqa: E402
from orchestrator.db.models import Run  # noqa: E402
from orchestrator.runtime import Runtime  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

DB_NAME = "orchestrator_bench_maps"
BROKER = os.environ["BENCH_BROKER_URL"]
#: Most times the plain Celery figure the map may take (issue 12).
TARGET_RATIO = 3.0
#: Seconds between two samples of the locks.
SAMPLE_EVERY = 0.01

_SAMPLE = text(
    """
SELECT (SELECT count(*) FROM pgrowlocks('runs')) AS run_row_locks,
       count(*) FILTER (WHERE a.wait_event_type = 'Lock') AS lock_waits,
       array_remove(array_agg(CASE WHEN a.wait_event_type = 'Lock'
                                   THEN left(regexp_replace(a.query, '\\s+', ' ', 'g'), 70) END),
                    NULL) AS waiting
  FROM pg_stat_activity a
 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
"""
)


@dataclass
class LockSamples:
    """What the sampler saw while one map ran."""

    samples: int = 0
    #: Samples in which some transaction held a row lock on `runs`.
    run_row_locked: int = 0
    #: Samples in which at least one backend waited for a lock, and the total of waiters.
    waiting_samples: int = 0
    waiters: int = 0
    #: The statements seen waiting for a lock, by their start.
    waiting: Counter[str] = field(default_factory=Counter)


class LockSampler(threading.Thread):
    """Samples the database's locks until stopped (its own autocommit connection)."""

    def __init__(self, db: Engine) -> None:
        super().__init__(name="lock-sampler", daemon=True)
        self.db = db
        self.found = LockSamples()
        self.halt = threading.Event()

    def run(self) -> None:
        with self.db.connect() as conn:
            while not self.halt.is_set():
                row = conn.execute(_SAMPLE).one()
                self.found.samples += 1
                self.found.run_row_locked += row.run_row_locks > 0
                if row.lock_waits:
                    self.found.waiting_samples += 1
                    self.found.waiters += row.lock_waits
                    self.found.waiting.update(row.waiting)
                self.halt.wait(SAMPLE_EVERY)

    def stop(self) -> LockSamples:
        self.halt.set()
        self.join(10)
        return self.found


def plain_round(tasks: int, counter: redis.Redis) -> float:
    """Seconds from the first of `tasks` no-op Celery tasks sent to the last one done."""
    counter.delete("plain:done")
    began = time.perf_counter()
    with plain_app.producer_or_acquire() as producer:
        for _ in range(tasks):
            last.apply_async(producer=producer)
    wait_until(lambda: int(counter.get("plain:done") or 0) >= tasks, timeout=900)
    return time.perf_counter() - began


@dataclass
class MapRound:
    seconds: float
    #: Of which `start_run`: the map's expansion, its rows and its messages.
    start_seconds: float
    locks: LockSamples


def map_round(items: int, rt: Runtime, workflow: str, monitor: Engine | None) -> MapRound:
    """One run of `workflow` mapping over `items` no-op items, on the workers; the tables are
    emptied first."""
    with rt.db.begin() as conn:
        conn.execute(text("TRUNCATE attempts, steps, runs CASCADE"))
    sampler = LockSampler(monitor) if monitor is not None else None
    if sampler is not None:
        sampler.start()
    began = time.perf_counter()
    run_id = rt.engine.start_run(workflow, {"n": items})
    started = time.perf_counter() - began

    def done() -> bool:
        with rt.sessions() as session:
            status = session.scalar(select(Run.status).where(Run.id == run_id))
        if status not in ("pending", "running", "succeeded"):
            raise SystemExit(f"the map run ended {status}")
        return status == "succeeded"

    wait_until(done, timeout=900)
    elapsed = time.perf_counter() - began
    with rt.db.connect() as conn:  # the map's result: one null per item, in item order
        length = conn.scalar(text(
            "SELECT jsonb_array_length(result) FROM steps WHERE map_node IS NULL AND run_id = :rid"
        ), {"rid": run_id})
    if length != items:
        raise SystemExit(f"the map's result holds {length} items, not {items}")
    locks = sampler.stop() if sampler is not None else LockSamples()
    return MapRound(elapsed, started, locks)


def item_timings(rt: Runtime) -> tuple[float, float, float]:
    """p50 and p95 of the items' attempts (ms, start to success) and items done per second
    between the first attempt's start and the last one's end."""
    with rt.db.connect() as conn:
        row = conn.execute(text(
            """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY d) AS p95,
       count(*) / greatest(extract(epoch FROM max(f) - min(s)), 0.001) AS rate
  FROM (SELECT a.started_at AS s, a.finished_at AS f,
               extract(epoch FROM a.finished_at - a.started_at) * 1000 AS d
          FROM attempts a JOIN steps st ON st.id = a.step_id
         WHERE st.map_node IS NOT NULL AND a.status = 'succeeded') t
"""
        )).one()
    return float(row.p50 or 0), float(row.p95 or 0), float(row.rate or 0)


def print_profile(directory: Path, top: int = 30) -> None:
    files = sorted(directory.glob("worker-*.prof"))
    if not files:
        print("  no worker profile was written")
        return
    stats = pstats.Stats(*[str(f) for f in files], stream=sys.stdout)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--limited", action="store_true", help="the map with concurrency=20")
    parser.add_argument("--no-locks", action="store_true", help="do not sample the locks")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    # A `timeout` or Ctrl-C still stops the workers (the `finally` below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    workflow = "bench-map-limited" if args.limited else "bench-map"

    redis.Redis.from_url(BROKER).flushdb()
    url = fresh_database(DB_NAME)
    settings = Settings(database_url=url, broker_url=BROKER, workflows=("bench.map_flows",),
                        max_map_items=max(args.items, 200))
    logs = Path(os.environ.get("BENCH_LOGS", "/tmp/orchestrator-bench"))
    logs.mkdir(parents=True, exist_ok=True)
    extra = {"BENCH_BROKER_URL": BROKER, "ORCHESTRATOR_MAX_MAP_ITEMS": str(max(args.items, 200))}
    profile_dir = logs / "maps-profile"
    if args.profile:
        profile_dir.mkdir(exist_ok=True)
        for old in profile_dir.glob("*.prof"):
            old.unlink()
        extra["BENCH_PROFILE_DIR"] = str(profile_dir)
    env = worker_env(settings, **extra)
    monitor = None
    if not args.no_locks:
        monitor = create_engine(url, isolation_level="AUTOCOMMIT", pool_size=1)
        with monitor.connect() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pgrowlocks"))
    plain_worker = start(
        [sys.executable, "-m", "celery", "-A", "bench.plain_celery", "worker", "--pool=prefork",
         f"--concurrency={args.concurrency}", "--queues=plain", "--loglevel=WARNING",
         "--without-gossip", "--without-mingle", "-n", "plain-maps@bench"],
        env, logs / "maps-plain-worker.log", "",
    )
    orch_worker = start(
        [sys.executable, "-m", "orchestrator", "--log-level=WARNING", "worker",
         f"--concurrency={args.concurrency}", "--hostname=orch-maps@bench"],
        env, logs / "maps-orch-worker.log", "worker serving queues",
    )
    rt = Runtime(settings)
    counter = redis.Redis.from_url(BROKER)
    time.sleep(3)  # let both workers finish starting their pools
    plain_times: list[float] = []
    map_rounds: list[MapRound] = []
    try:
        plain_round(200, counter)  # warm-up: connections, imports, queues declared
        map_round(200, rt, workflow, None)
        for r in range(args.rounds):  # ABBA: plain, map, map, plain, ...
            order = ("plain", "map") if r % 2 == 0 else ("map", "plain")
            for which in order:
                if which == "plain":
                    plain_times.append(plain_round(args.items, counter))
                else:
                    map_rounds.append(map_round(args.items, rt, workflow, monitor))
        p50, p95, rate = item_timings(rt)  # of the last map round
    finally:
        stop(orch_worker)
        stop(plain_worker)
        rt.close()
        plain_app.close()
        if monitor is not None:
            monitor.dispose()

    plain = statistics.median(plain_times)
    mapped = statistics.median(m.seconds for m in map_rounds)
    n = args.items
    print(f"{n} no-op items, {args.concurrency} worker processes (prefork), {args.rounds} rounds "
          f"ABBA (median); map {workflow!r}")
    print(f"  plain Celery tasks : {plain:7.2f} s  ({plain / n * 1000:5.2f} ms/task, "
          f"{n / plain:5.0f} tasks/s)  rounds {[round(t, 2) for t in plain_times]}")
    print(f"  orchestrator map   : {mapped:7.2f} s  ({mapped / n * 1000:5.2f} ms/item, "
          f"{n / mapped:5.0f} items/s)  rounds {[round(m.seconds, 2) for m in map_rounds]}")
    print(f"    of which start_run (expansion: rows + messages): "
          f"{[round(m.start_seconds, 2) for m in map_rounds]} s")
    print(f"    item attempts (last round): p50 {p50:.2f} ms, p95 {p95:.2f} ms start to success; "
          f"{rate:.0f} items/s first start to last end")
    ratio = mapped / plain
    print(f"  ratio map / plain Celery: {ratio:.2f}x  (target <= {TARGET_RATIO:g}: "
          f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})")
    if monitor is not None:
        for i, m in enumerate(map_rounds, 1):
            locks = m.locks
            print(f"  locks, map round {i}: {locks.samples} samples; a row lock held on runs in "
                  f"{locks.run_row_locked}; some backend waiting for a lock in "
                  f"{locks.waiting_samples} ({locks.waiters} waiters)")
            for query, count in locks.waiting.most_common(5):
                print(f"      {count:5d} x waiting: {query}")
    if args.profile:
        print_profile(profile_dir)


if __name__ == "__main__":
    main()
