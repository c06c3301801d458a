"""Peers: 3-step no-op chains through plain Celery, this project and DBOS, in one table.

One script, the same PostgreSQL and Redis, `--runs` runs (default 200) per system and round:

- plain Celery: `chain(noop, noop, last)` on a prefork worker of `--concurrency` processes,
  the orchestrator's delivery settings (`bench/plain_celery.py`; no database);
- orchestrator: `bench-chain` (`bench/flows.py`) started through the engine, run by a real
  `orchestrator worker` of `--concurrency` prefork processes (PostgreSQL + Redis);
- DBOS direct: a `@DBOS.workflow` of three `@DBOS.step`s, called directly in `--concurrency`
  processes (each `DBOS.launch()`ed on a PostgreSQL system database of its own), each
  process calling its share of the runs one after the other;
- DBOS queued: the same workflow enqueued with a `DBOSClient` on a `DBOS.register_queue`
  queue served by `--concurrency` launched DBOS processes (DBOS's way to run workflows on
  workers; the queue's polling interval is `--dbos-poll`, DBOS's default 1 s).

Per system: throughput (runs over the wall time from the first start to the last end),
latency of each run from its start (the call, the enqueue, `start_run`) to its end (the last
step done as the system records it: Redis for Celery, `runs.finished_at`, DBOS's
`workflow_status.updated_at`, the call's return), and CPU per run: the user+system CPU of
every process in the workers' sessions (`/proc/<pid>/stat`, prefork children and the
orchestrator's recovery process included) and, separately, that of the PostgreSQL backends
connected to the system's database (`pg_stat_activity` pids, same machine), divided by the
runs. The CPU of Redis and of this (driving) process is not counted for any system.
Rounds alternate the systems' order (ABCD DCBA ...); medians over rounds are printed.

    python bench/peers.py [--runs 200] [--rounds 2] [--concurrency 2] [--dbos-poll 1.0]
                          [--only celery,orchestrator,dbos-direct,dbos-queued]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import PG_ADMIN, claimed_redis, fresh_database, worker_env  # noqa: E402
from bench.engine_vs_celery import start, stop, wait_until  # noqa: E402

DB_NAME = "orchestrator_bench_peers"
DBOS_DB_NAME = "orchestrator_bench_peers_dbos"
#: The Redis database of this run (`claimed_redis`), set by `main`.
BROKER = ""
LOGS = Path(os.environ.get("BENCH_LOGS", "/tmp/orchestrator-bench-peers"))
QUEUE = "peers"
WORKFLOW = "peers_chain"
SYSTEMS = ("celery", "orchestrator", "dbos-direct", "dbos-queued")
LABELS = {"celery": "plain Celery chain", "orchestrator": "orchestrator",
          "dbos-direct": "DBOS direct", "dbos-queued": "DBOS queued"}
_TICK = os.sysconf("SC_CLK_TCK")


# -- CPU from /proc -------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, float] | None:
    """(session id, user+system CPU seconds) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[3]), (int(fields[11]) + int(fields[12])) / _TICK


def session_cpu(sessions: set[int]) -> float:
    """CPU seconds used so far by the living processes of these sessions."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None and found[0] in sessions:
                total += found[1]
    return total


def backend_cpu(admin, database: str) -> dict[int, float]:  # noqa: ANN001
    """CPU seconds so far of each PostgreSQL backend connected to `database`."""
    with admin.connect() as conn:
        pids = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": database}).scalars()
        return {pid: found[1] for pid in pids if (found := _stat(pid)) is not None}


def backend_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


# -- one measured round ---------------------------------------------------------------------

@dataclass
class Figures:
    walls: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # ms, every run of every round
    worker_cpu: list[float] = field(default_factory=list)  # ms per run, per round
    pg_cpu: list[float] = field(default_factory=list)


@dataclass
class System:
    name: str
    sessions: set[int]
    database: str | None
    #: Runs `runs` runs; returns (wall seconds, latencies in ms).
    run: Callable[[int], tuple[float, list[float]]]
    stop: Callable[[], None]


def measure(system: System, runs: int, admin, figures: Figures) -> None:  # noqa: ANN001
    pg_before = backend_cpu(admin, system.database) if system.database else {}
    cpu_before = session_cpu(system.sessions)
    wall, latencies = system.run(runs)
    cpu = session_cpu(system.sessions) - cpu_before
    pg = backend_delta(pg_before, backend_cpu(admin, system.database)) if system.database else 0.0
    figures.walls.append(wall)
    figures.latencies += latencies
    figures.worker_cpu.append(1000 * cpu / runs)
    figures.pg_cpu.append(1000 * pg / runs)
    print(f"  {LABELS[system.name]:<20} {runs / wall:7.1f} runs/s  p50 {statistics.median(latencies):7.1f} ms  "
          f"worker CPU {1000 * cpu / runs:5.1f} ms/run  PostgreSQL {1000 * pg / runs:5.1f} ms/run", flush=True)


# -- the systems ----------------------------------------------------------------------------

def plain_celery(concurrency: int, env: dict[str, str]) -> System:
    from celery import chain

    from bench.plain_celery import app, last, noop

    app.conf.broker_url = BROKER  # imported (by bench.engine_vs_celery) before BROKER was claimed
    worker = start(
        [sys.executable, "-m", "celery", "-A", "bench.plain_celery", "worker", "--pool=prefork",
         f"--concurrency={concurrency}", "--queues=plain", "--loglevel=WARNING",
         "--without-gossip", "--without-mingle", "-n", "plain@peers"],
        env, LOGS / "plain-worker.log", "",
    )
    counter = redis.Redis.from_url(BROKER)

    def run(runs: int) -> tuple[float, list[float]]:
        counter.delete("plain:done", "plain:ended")
        began = time.time()
        started: dict[str, float] = {}
        for n in range(runs):
            tag = str(n)
            started[tag] = time.time()
            chain(noop.si(), noop.si(), last.si(tag)).apply_async()
        wait_until(lambda: int(counter.get("plain:done") or 0) >= runs)
        ended = {k.decode(): float(v) for k, v in counter.hgetall("plain:ended").items()}
        return max(ended.values()) - began, [1000 * (ended[t] - started[t]) for t in started]

    def finish() -> None:
        stop(worker)
        app.close()

    return System("celery", {worker.pid}, None, run, finish)


def orchestrator(concurrency: int, env: dict[str, str], settings) -> System:  # noqa: ANN001
    from orchestrator.runtime import Runtime

    worker = start(
        [sys.executable, "-m", "orchestrator", "--log-level=WARNING", "worker",
         f"--concurrency={concurrency}", "--hostname=orch@peers"],
        env, LOGS / "orch-worker.log", "worker serving queues",
    )
    rt = Runtime(settings)
    ended_sql = text("SELECT count(*) FROM runs WHERE status = 'succeeded'")

    def run(runs: int) -> tuple[float, list[float]]:
        with rt.db.begin() as conn:
            conn.execute(text("TRUNCATE attempts, steps, runs CASCADE"))
        began = time.time()
        for _ in range(runs):
            rt.engine.start_run("bench-chain", {})

        def done() -> bool:
            with rt.db.connect() as conn:
                return conn.scalar(ended_sql) >= runs

        wait_until(done)
        with rt.db.connect() as conn:
            rows = conn.execute(text("SELECT created_at, finished_at FROM runs")).all()
        return (max(r.finished_at for r in rows).timestamp() - began,
                [1000 * (r.finished_at - r.created_at).total_seconds() for r in rows])

    def finish() -> None:
        stop(worker)
        rt.close()

    return System("orchestrator", {worker.pid}, DB_NAME, run, finish)


def _dbos_child(mode: str, env: dict[str, str], log: Path, attempts: int = 5) -> subprocess.Popen[str]:
    """A launched DBOS process (`dbos_child`); retried a few times when it fails to launch
    (on a shared PostgreSQL, "too many clients" at launch is common)."""
    for attempt in range(attempts):
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--dbos-child", mode],
            env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("wb"),
            text=True, start_new_session=True,
        )
        if process.stdout.readline().strip() == "ready":  # type: ignore[union-attr]
            return process
        process.wait(20)
        if attempt + 1 < attempts:
            time.sleep(2)
    raise SystemExit(f"a DBOS {mode} process did not start:\n{log.read_text()[-2000:]}")


def _end_child(process: subprocess.Popen[str]) -> None:
    try:
        process.stdin.close()  # type: ignore[union-attr]
        process.wait(20)
    except (OSError, subprocess.TimeoutExpired):
        stop(process)  # type: ignore[arg-type]


def dbos_direct(concurrency: int, env: dict[str, str]) -> System:
    children = [_dbos_child("direct", env, LOGS / f"dbos-direct-{i}.log") for i in range(concurrency)]

    def run(runs: int) -> tuple[float, list[float]]:
        shares = [runs // concurrency + (i < runs % concurrency) for i in range(concurrency)]
        for child, share in zip(children, shares, strict=True):
            child.stdin.write(f"{share}\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
        spans = [span for child in children for span in json.loads(child.stdout.readline())]  # type: ignore[union-attr]
        return (max(e for _, e in spans) - min(s for s, _ in spans),
                [1000 * (e - s) for s, e in spans])

    def finish() -> None:
        for child in children:
            _end_child(child)

    return System("dbos-direct", {c.pid for c in children}, DBOS_DB_NAME, run, finish)


def dbos_queued(concurrency: int, env: dict[str, str], dbos_url: str) -> System:
    from dbos import DBOSClient

    children = [_dbos_child("queue", env, LOGS / f"dbos-queue-{i}.log") for i in range(concurrency)]
    client = DBOSClient(system_database_url=dbos_url)
    db = create_engine(dbos_url.replace("postgresql://", "postgresql+psycopg://", 1))
    done_sql = text("SELECT count(*) FROM dbos.workflow_status WHERE queue_name = :q AND status = 'SUCCESS' "
                    "AND workflow_uuid LIKE :prefix")
    rows_sql = text("SELECT created_at, updated_at FROM dbos.workflow_status WHERE workflow_uuid LIKE :prefix")

    def run(runs: int) -> tuple[float, list[float]]:
        prefix = f"peers-{uuid.uuid4().hex[:8]}-"
        began = time.time()
        for n in range(runs):
            client.enqueue({"queue_name": QUEUE, "workflow_name": WORKFLOW, "workflow_id": f"{prefix}{n}"})

        def done() -> bool:
            with db.connect() as conn:
                return conn.scalar(done_sql, {"q": QUEUE, "prefix": prefix + "%"}) >= runs

        wait_until(done)
        with db.connect() as conn:
            rows = conn.execute(rows_sql, {"prefix": prefix + "%"}).all()
        return (max(r.updated_at for r in rows) / 1000 - began,
                [float(r.updated_at - r.created_at) for r in rows])

    def finish() -> None:
        client.destroy()
        db.dispose()
        for child in children:
            _end_child(child)

    return System("dbos-queued", {c.pid for c in children}, DBOS_DB_NAME, run, finish)


def dbos_child(mode: str) -> None:
    """A launched DBOS process: `direct` runs the workflow N times per line of stdin and
    answers the (start, end) of each run; `queue` serves the queue until stdin closes."""
    import logging

    from dbos import DBOS

    logging.getLogger("dbos").setLevel(logging.WARNING)
    DBOS(config={"name": "bench-peers", "system_database_url": os.environ["BENCH_DBOS_URL"],
                 "log_level": "WARNING", "sys_db_pool_size": 4})

    @DBOS.step()
    def one() -> None:
        return None

    @DBOS.step()
    def two() -> None:
        return None

    @DBOS.step()
    def three() -> None:
        return None

    @DBOS.workflow(name=WORKFLOW)
    def chain() -> None:
        one()
        two()
        three()

    DBOS.launch()
    if mode == "queue":
        DBOS.register_queue(QUEUE, polling_interval_sec=float(os.environ["BENCH_DBOS_POLL"]),
                            on_conflict="always_update")
    print("ready", flush=True)
    for line in sys.stdin:
        if mode == "direct":
            spans = []
            for _ in range(int(line)):
                began = time.time()
                chain()
                spans.append((began, time.time()))
            print(json.dumps(spans), flush=True)
    DBOS.destroy()


def fresh_empty_database(name: str) -> str:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes per system")
    parser.add_argument("--dbos-poll", type=float, default=1.0, help="DBOS queue polling interval, s")
    parser.add_argument("--only", default=",".join(SYSTEMS), help="systems, comma-separated")
    parser.add_argument("--dbos-child", choices=("direct", "queue"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dbos_child:
        dbos_child(args.dbos_child)
        return
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"--only: unknown system(s) {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")

    with claimed_redis() as broker_url:
        global BROKER
        BROKER = broker_url
        os.environ["BENCH_BROKER_URL"] = broker_url  # bench.plain_celery reads it at import
        compare(args, wanted)


def compare(args: argparse.Namespace, wanted: list[str]) -> None:
    from orchestrator.settings import Settings

    LOGS.mkdir(parents=True, exist_ok=True)
    settings = Settings(database_url=fresh_database(DB_NAME), broker_url=BROKER, workflows=("bench.flows",))
    dbos_url = fresh_empty_database(DBOS_DB_NAME).replace("+psycopg", "")
    env = worker_env(settings, BENCH_BROKER_URL=BROKER, BENCH_DBOS_URL=dbos_url,
                     BENCH_DBOS_POLL=str(args.dbos_poll), PYTHONUNBUFFERED="1")
    admin = create_engine(PG_ADMIN)
    systems: list[System] = []
    try:
        makers = {
            "celery": lambda: plain_celery(args.concurrency, env),
            "orchestrator": lambda: orchestrator(args.concurrency, env, settings),
            "dbos-direct": lambda: dbos_direct(args.concurrency, env),
            "dbos-queued": lambda: dbos_queued(args.concurrency, env, dbos_url),
        }
        for name in wanted:
            systems.append(makers[name]())
        time.sleep(3)  # let the pools finish starting
        for system in systems:  # warm-up: connections, imports, queues declared
            print(f"warming up {LABELS[system.name]}", flush=True)
            system.run(20)
        figures = {s.name: Figures() for s in systems}
        for n in range(args.rounds):
            print(f"round {n + 1} of {args.rounds}: {args.runs} runs each", flush=True)
            for system in systems if n % 2 == 0 else systems[::-1]:
                measure(system, args.runs, admin, figures[system.name])
    finally:
        for system in systems:
            system.stop()
        admin.dispose()

    print()
    print(f"{args.runs} runs of a 3-step no-op chain x {args.rounds} rounds, {args.concurrency} worker "
          f"processes each, PostgreSQL + Redis on this machine (medians over rounds; latency over all runs)")
    header = f"{'system':<22}{'runs/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'worker CPU ms/run':>19}{'PG CPU ms/run':>15}"
    print(header)
    print("-" * len(header))
    for system in systems:
        f = figures[system.name]
        label = LABELS[system.name] + (f" ({args.dbos_poll:g} s poll)" if system.name == "dbos-queued" else "")
        pg = f"{statistics.median(f.pg_cpu):15.2f}" if system.database else f"{'-':>15}"
        print(f"{label:<22}{args.runs / statistics.median(f.walls):8.1f}{statistics.median(f.latencies):9.1f}"
              f"{percentile(f.latencies, 0.95):9.1f}{statistics.median(f.worker_cpu):19.2f}{pg}")
    if "celery" in figures and "orchestrator" in figures:
        ratio = statistics.median(figures["orchestrator"].walls) / statistics.median(figures["celery"].walls)
        print(f"orchestrator / plain Celery wall time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
