"""1,000 runs of `order-fulfilment` under the test harness vs the same runs on real workers.

The harness (`orchestrator.testing`) runs each run to its end in this process, on a SQLite
copy of the migrated schema, before starting the next: its figure is the time one run adds
to a test suite (target: at most 5 ms). The baseline is the same runs started the same way
(`WorkflowEngine.start_run`) and executed by a real `orchestrator worker` (Celery, prefork,
`--concurrency` processes) on Redis, with state in a fresh PostgreSQL database; its figure
is the wall time from the first start to the last run succeeded, per run. Needs PostgreSQL
and Redis on localhost.

    python bench/harness.py [--runs 1000] [--concurrency 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import redis
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import fresh_database, worker_env  # noqa: E402
from bench.engine_vs_celery import orchestrator_round, start, stop  # noqa: E402
from orchestrator.db.models import Run  # noqa: E402
from orchestrator.runtime import Runtime  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.testing import Harness  # noqa: E402

WORKFLOW = "order-fulfilment"
DB_NAME = "orchestrator_bench_harness"
BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13")
#: Milliseconds per run the harness should not exceed.
TARGET_MS = 5.0


def order(n: int) -> dict:
    """Half express, half standard: both branches of the workflow, one skipped each time."""
    return {"order_id": n, "express": n % 2 == 0, "items": [{"sku": "tea", "qty": 1, "price": 4.5}]}


def harness_round(harness: Harness, runs: int) -> float:
    """Seconds for `runs` runs, each started and run to its end before the next."""
    began = time.perf_counter()
    for n in range(runs):
        harness.start(WORKFLOW, order(n))
    elapsed = time.perf_counter() - began
    with harness.sessions() as session:
        done = session.scalar(select(func.count()).select_from(Run).where(Run.status == "succeeded"))
    if done < runs:
        raise SystemExit(f"only {done} of {runs} harness runs succeeded")
    return elapsed


def measure_harness(runs: int, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        with Harness.create(["workflows"]) as harness:  # a fresh database per round
            harness_round(harness, 50)  # warm-up: imports, statement caches
            times.append(harness_round(harness, runs))
    return times


def measure_workers(runs: int, rounds: int, concurrency: int) -> list[float]:
    redis.Redis.from_url(BROKER).flushdb()
    settings = Settings(database_url=fresh_database(DB_NAME), broker_url=BROKER, workflows=("workflows",))
    env = worker_env(settings)
    logs = Path(os.environ.get("BENCH_LOGS", "/tmp/orchestrator-bench"))
    logs.mkdir(parents=True, exist_ok=True)
    worker = start(
        [sys.executable, "-m", "orchestrator", "--log-level=WARNING", "worker",
         f"--concurrency={concurrency}", "--hostname=harness-baseline@bench"],
        env, logs / "harness-baseline-worker.log", "worker serving queues",
    )
    rt = Runtime(settings)
    time.sleep(3)  # let the worker finish starting its pool
    try:
        orchestrator_round(50, rt, WORKFLOW, order)  # warm-up: connections, imports, queues
        return [orchestrator_round(runs, rt, WORKFLOW, order) for _ in range(rounds)]
    finally:
        stop(worker)
        rt.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    harness_times = measure_harness(args.runs, args.rounds)
    worker_times = measure_workers(args.runs, args.rounds, args.concurrency)
    harness_ms = statistics.median(harness_times) / args.runs * 1000
    worker_ms = statistics.median(worker_times) / args.runs * 1000
    print(f"{args.runs} runs of {WORKFLOW} (3 steps run, 1 skipped), {args.rounds} rounds (median)")
    print(f"  harness, in-process, SQLite        : {harness_ms:6.2f} ms/run  (target <= {TARGET_MS:g})"
          f"  rounds {[round(t, 2) for t in harness_times]} s")
    print(f"  real workers ({args.concurrency} processes), PostgreSQL + Redis: {worker_ms:6.2f} ms/run"
          f"  rounds {[round(t, 2) for t in worker_times]} s")
    print(f"  ratio harness / real workers: {harness_ms / worker_ms:.2f}x"
          f" ({worker_ms / harness_ms:.1f}x faster)")
    if harness_ms > TARGET_MS:
        print(f"  over the {TARGET_MS:g} ms target")


if __name__ == "__main__":
    main()
