"""200 runs of a 3-step chain through the orchestrator vs 200 plain Celery chains of 3 no-ops.

Same machine, same Redis broker, same number of worker processes, same script, alternating
rounds; prints both times and their ratio, and the CPU time per run of each side's worker
processes (their whole process tree, from /proc) and, for the orchestrator, of the PostgreSQL
backends serving its workers. Needs PostgreSQL and Redis on localhost. BENCH_DB names the
database (default orchestrator_bench), BENCH_BROKER_URL the Redis database.

    python bench/engine_vs_celery.py [--runs 200] [--rounds 3] [--concurrency 2] [--profile] [--inline-off] [--dbos]

--inline-off first measures workers that send every step as a message
(ORCHESTRATOR_INLINE_STEPS=0, the behaviour before inline steps), then the default ones,
each beside plain Celery rounds of its own. --dbos then runs DBOS Transact called directly
(bench/dbos_direct.py: the same chain as three DBOS steps, pip package `dbos`) and prints its
time and CPU per run (its process and its PostgreSQL backends).

--profile samples the orchestrator's worker processes with py-spy (pip install py-spy) and
prints where their time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery import chain
from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import PG_ADMIN, fresh_database, worker_env  # noqa: E402
from bench.cpu import Meter  # noqa: E402
from bench.plain_celery import app as plain_app  # noqa: E402
from bench.plain_celery import last, noop  # noqa: E402
from orchestrator.db.models import Run  # noqa: E402
from orchestrator.runtime import Runtime  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

DB_NAME = os.environ.get("BENCH_DB", "orchestrator_bench")
#: application_name of the orchestrator workers' connections, to find their backends.
WORKER_APP = "bench-orchestrator-worker"
BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/14")


def start(argv: list[str], env: dict[str, str], log: Path, ready: str) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 60
    while ready not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{argv} did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def wait_until(predicate, timeout: float = 300) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("benchmark timed out")
        time.sleep(0.01)


def plain_round(runs: int, counter: redis.Redis) -> float:
    counter.delete("plain:done")
    began = time.perf_counter()
    for _ in range(runs):
        chain(noop.si(), noop.si(), last.si()).apply_async()
    wait_until(lambda: int(counter.get("plain:done") or 0) >= runs)
    return time.perf_counter() - began


def orchestrator_round(
    runs: int, rt: Runtime, workflow: str = "bench-chain",
    input_of: Callable[[int], dict[str, Any]] = lambda n: {},
) -> float:
    """Seconds from the first of `runs` starts of `workflow` (run n gets `input_of(n)`) to
    the last run succeeded, on the workers; the tables are emptied first."""
    with rt.db.begin() as conn:
        conn.execute(text("TRUNCATE attempts, steps, runs CASCADE"))
    began = time.perf_counter()
    for n in range(runs):
        rt.engine.start_run(workflow, input_of(n))

    def done() -> bool:
        with rt.sessions() as session:
            return session.scalar(
                select(func.count()).select_from(Run).where(Run.status == "succeeded")
            ) >= runs

    wait_until(done)
    return time.perf_counter() - began


def dbos_rounds(args: argparse.Namespace) -> list[dict[str, float]]:
    """`bench/dbos_direct.py`'s rounds on an empty database of its own: seconds and CPU each."""
    name = DB_NAME + "_dbos"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = PG_ADMIN.rsplit("/", 1)[0].replace("+psycopg", "") + "/" + name
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "dbos_direct.py"), "--url", url, "--runs", str(args.runs),
         "--rounds", str(args.rounds), "--concurrency", str(args.concurrency)],
        capture_output=True, text=True, timeout=1800, start_new_session=True, cwd=ROOT,
    )
    rounds = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not rounds:
        raise SystemExit(f"bench/dbos_direct.py failed:\n{done.stderr[-3000:]}")
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--dbos", action="store_true",
                        help="also run DBOS called directly (bench/dbos_direct.py) on a database of its own")
    parser.add_argument("--inline-off", action="store_true",
                        help="first measure workers with ORCHESTRATOR_INLINE_STEPS=0 (every step "
                             "a message, as before inline steps), each beside its own plain rounds")
    args = parser.parse_args()

    redis.Redis.from_url(BROKER).flushdb()
    settings = Settings(database_url=fresh_database(DB_NAME), broker_url=BROKER, workflows=("bench.flows",))
    env = worker_env(settings, BENCH_BROKER_URL=BROKER)
    logs = Path(os.environ.get("BENCH_LOGS", "/tmp/orchestrator-bench"))
    logs.mkdir(parents=True, exist_ok=True)
    plain_worker = start(
        [sys.executable, "-m", "celery", "-A", "bench.plain_celery", "worker", "--pool=prefork",
         f"--concurrency={args.concurrency}", "--queues=plain", "--loglevel=WARNING",
         "--without-gossip", "--without-mingle", "-n", "plain@bench"],
        env, logs / "plain-worker.log", "",
    )
    rt = Runtime(settings)
    counter = redis.Redis.from_url(BROKER)
    plain_meter = Meter(plain_worker.pid)
    variants = ([("inline off", "0")] if args.inline_off else []) + [("inline on", os.environ.get(
        "ORCHESTRATOR_INLINE_STEPS", str(settings.inline_steps)))]
    results = []
    try:
        for label, inline_steps in variants:
            orch_worker = start(
                [sys.executable, "-m", "orchestrator", "--log-level=WARNING", "worker",
                 f"--concurrency={args.concurrency}", "--hostname=orch@bench"],
                {**env, "PGAPPNAME": WORKER_APP, "ORCHESTRATOR_INLINE_STEPS": inline_steps},
                logs / f"orch-worker-{inline_steps}.log", "worker serving queues",
            )
            try:
                time.sleep(3)  # let both workers finish starting their pools
                # Warm-up: connections, imports, queues declared.
                plain_round(20, counter)
                orchestrator_round(20, rt)
                profiler = None
                if args.profile:
                    profiler = subprocess.Popen(
                        ["py-spy", "record", "--subprocesses", "--format", "raw", "--rate", "200",
                         "-o", str(logs / f"worker-{inline_steps}.pyspy.txt"), "--pid", str(orch_worker.pid)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )
                    time.sleep(1)
                orch_meter = Meter(orch_worker.pid, rt.db, WORKER_APP)
                plain_times: list[float] = []
                orch_times: list[float] = []
                plain_cpu: list[dict[str, float]] = []
                orch_cpu: list[dict[str, float]] = []
                for _ in range(args.rounds):
                    plain_meter.start()
                    plain_times.append(plain_round(args.runs, counter))
                    plain_cpu.append(plain_meter.stop())
                    orch_meter.start()
                    orch_times.append(orchestrator_round(args.runs, rt))
                    orch_cpu.append(orch_meter.stop())
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)
                    profiler.wait(30)
            finally:
                stop(orch_worker)
            results.append((label, inline_steps, plain_times, orch_times, plain_cpu, orch_cpu))
    finally:
        stop(plain_worker)
        rt.close()
        plain_app.close()

    dbos = dbos_rounds(args) if args.dbos else []

    def per_run(samples: list[dict[str, float]], kind: str) -> float:
        return 1000 * statistics.median(s[kind] for s in samples) / args.runs

    print(f"{args.runs} runs x 3 steps, {args.concurrency} worker processes, {args.rounds} rounds (median)")
    for label, inline_steps, plain_times, orch_times, plain_cpu, orch_cpu in results:
        plain, orch = statistics.median(plain_times), statistics.median(orch_times)
        paired = statistics.median(o / p for o, p in zip(orch_times, plain_times, strict=True))
        print(f"orchestrator {label} (ORCHESTRATOR_INLINE_STEPS={inline_steps}):")
        print(f"  plain Celery chains : {plain:7.2f} s  ({3 * args.runs / plain:7.0f} tasks/s)  rounds {[round(t, 2) for t in plain_times]}")
        print(f"  orchestrator runs   : {orch:7.2f} s  ({3 * args.runs / orch:7.0f} steps/s)  rounds {[round(t, 2) for t in orch_times]}")
        print(f"  ratio orchestrator / plain Celery: {orch / plain:.2f}x (median of each round's own ratio {paired:.2f}x)")
        print(f"  CPU per run, plain Celery : workers {per_run(plain_cpu, 'worker'):5.2f} ms")
        print(f"  CPU per run, orchestrator : workers {per_run(orch_cpu, 'worker'):5.2f} ms"
              f" + PostgreSQL backends {per_run(orch_cpu, 'postgres'):5.2f} ms")
    if dbos:
        took = statistics.median(r["seconds"] for r in dbos)
        plain = statistics.median(results[-1][2])
        print(f"DBOS direct ({args.concurrency} threads of one process; after the rounds above, not alternating):")
        print(f"  DBOS workflows      : {took:7.2f} s  ({args.runs / took:7.0f} runs/s)  rounds "
              f"{[round(r['seconds'], 2) for r in dbos]}; {took / plain:.2f}x the last plain Celery median")
        print(f"  CPU per run, DBOS   : process {per_run(dbos, 'worker'):5.2f} ms"
              f" + PostgreSQL backends {per_run(dbos, 'postgres'):5.2f} ms")
    if args.profile:
        print(f"  worker profiles (py-spy raw stacks): {logs}/worker-*.pyspy.txt")


if __name__ == "__main__":
    main()
