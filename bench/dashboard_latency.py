"""Latency of the dashboard's runs list and run detail (pages and API) with 1,000,000 runs.

Seeds a PostgreSQL database of its own (runs, 4 steps each, their attempts, and events
that started a tenth of the runs) with `INSERT ... SELECT generate_series`, building the
indexes after the load. Then serves the app with waitress on a free loopback port and
sends each request `--requests` times (after a warm-up), over one keep-alive connection,
with a different random run or cursor each time where the URL takes one. Prints p50/p95
beside the target (p95 < 150 ms), and EXPLAIN ANALYZE of every query the list and detail
requests send, failing if any of them scans a whole table.

    python bench/dashboard_latency.py [--runs 1000000] [--requests 200] [--reuse] [--keep]

--reuse keeps an already seeded database of the right size; --keep leaves it afterwards.
Needs PostgreSQL on localhost (ORCHESTRATOR_BENCH_PG_ADMIN to point elsewhere).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, event, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.db.migrate import upgrade  # noqa: E402
from orchestrator.runtime import Runtime  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from web import create_app  # noqa: E402
from web.params import run_cursor  # noqa: E402

PG_ADMIN = os.environ.get(
    "ORCHESTRATOR_BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
DB_NAME = "orchestrator_bench_dashboard"
#: The issue's target for the runs list and run detail pages.
TARGET_P95_MS = 150.0
TABLES = ("events", "runs", "steps", "attempts")
#: The seeded runs are spread over this many days, newest now.
SPAN_DAYS = 30

SEED_EVENTS = """
INSERT INTO events (id, topic, partition, "offset", key, headers, payload, raw, kafka_timestamp,
                    received_at, outcome, reason)
SELECT k, 'orders', k % 4, k, 'order-' || k, '[]'::jsonb,
       jsonb_build_object('type', 'order.created', 'order', jsonb_build_object('id', k)),
       convert_to('{"type": "order.created", "order": {"id": ' || k || '}}', 'UTF8'),
       :t0 + (10 * (k - 1) + 1) * :step - interval '30 ms',
       :t0 + (10 * (k - 1) + 1) * :step - interval '10 ms', 'matched', NULL
FROM generate_series(1, :n / 10) AS k
"""

SEED_RUNS = """
INSERT INTO runs (id, workflow, status, input, error, created_at, started_at, finished_at,
                  event_id, dedupe_key)
SELECT md5('run' || g)::uuid,
       CASE WHEN g % 10 = 0 THEN 'bench-audit' ELSE 'bench-shop' END,
       CASE WHEN g > :n - 10 THEN 'pending' WHEN g > :n - 50 THEN 'running'
            WHEN g % 10 = 0 THEN 'failed' WHEN g % 101 = 0 THEN 'cancelled' ELSE 'succeeded' END,
       jsonb_build_object('order_id', g, 'items',
                          jsonb_build_array(jsonb_build_object('sku', 'tea', 'qty', 1 + g % 5))),
       CASE WHEN g > :n - 50 THEN NULL WHEN g % 10 = 0 THEN 'step ''check'' failed'
            WHEN g % 101 = 0 THEN 'cancelled' END,
       :t0 + g * :step,
       CASE WHEN g > :n - 10 THEN NULL ELSE :t0 + g * :step + interval '20 ms' END,
       CASE WHEN g > :n - 50 THEN NULL ELSE :t0 + g * :step + interval '900 ms' END,
       CASE WHEN g % 10 = 1 THEN g / 10 + 1 END,
       NULL
FROM generate_series(1, :n) AS g
"""

SEED_STEPS = """
INSERT INTO steps (run_id, name, status, queue, attempts, max_attempts, result, error,
                   queued_at, started_at, finished_at)
SELECT r.id,
       (CASE WHEN r.workflow = 'bench-audit' THEN ARRAY['fetch', 'check', 'flag', 'report']
             ELSE ARRAY['reserve', 'charge', 'notify', 'ship'] END)[k],
       st.status, 'orchestrator',
       CASE WHEN st.status IN ('succeeded', 'failed', 'running') THEN 1 ELSE 0 END, 1,
       CASE WHEN st.status = 'succeeded' THEN jsonb_build_object('ok', true, 'step', k) END,
       CASE WHEN st.status = 'failed' THEN 'ValueError: check failed' END,
       CASE WHEN st.status <> 'pending' THEN r.created_at + k * interval '150 ms' END,
       CASE WHEN st.status IN ('succeeded', 'failed', 'running')
            THEN r.created_at + k * interval '150 ms' + interval '5 ms' END,
       CASE WHEN st.status IN ('succeeded', 'failed', 'cancelled')
            THEN r.created_at + k * interval '150 ms' + interval '120 ms' END
FROM runs r
CROSS JOIN generate_series(1, 4) AS k
CROSS JOIN LATERAL (SELECT CASE
    WHEN r.status = 'succeeded' THEN 'succeeded'
    WHEN r.status = 'failed' THEN CASE k WHEN 1 THEN 'succeeded' WHEN 2 THEN 'failed' ELSE 'cancelled' END
    WHEN r.status = 'cancelled' THEN CASE WHEN k <= 2 THEN 'succeeded' ELSE 'cancelled' END
    WHEN r.status = 'running' THEN CASE k WHEN 1 THEN 'succeeded' WHEN 2 THEN 'running'
                                          WHEN 3 THEN 'queued' ELSE 'pending' END
    ELSE CASE k WHEN 1 THEN 'queued' ELSE 'pending' END
  END AS status) AS st
"""

SEED_ATTEMPTS = """
INSERT INTO attempts (step_id, number, status, worker, started_at, finished_at, error, traceback, logs)
SELECT s.id, 1, s.status, 'orchestrator@bench', s.started_at, s.finished_at, s.error,
       CASE WHEN s.status = 'failed' THEN E'Traceback (most recent call last):\\n  File "audit.py", line 12, in check\\nValueError: check failed' END,
       jsonb_build_array(jsonb_build_object('ts', s.started_at, 'level', 'INFO',
                                            'message', 'step ' || s.name || ' ran'))
FROM steps s
WHERE s.status IN ('succeeded', 'failed', 'running')
"""


def run_uuid(g: int) -> uuid.UUID:
    """The id the seed gives run number `g` (md5('run' || g)::uuid in PostgreSQL)."""
    return uuid.UUID(hashlib.md5(f"run{g}".encode()).hexdigest())


def database_url() -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + DB_NAME


def seeded_runs(url: str) -> int | None:
    """Runs in an existing bench database, or None if it does not exist."""
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": DB_NAME}).first()
    admin.dispose()
    if not exists:
        return None
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM runs")).scalar_one()
    except Exception:  # noqa: BLE001 - no schema yet
        return None
    finally:
        engine.dispose()


def seed(url: str, runs: int) -> float:
    """Create the database and load `runs` runs; returns the seconds it took."""
    began = time.perf_counter()
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
    admin.dispose()
    upgrade(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        constraints = conn.execute(
            text(
                "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE conrelid::regclass::text = ANY(:t) "
                "AND contype IN ('p', 'u', 'f')"
            ),
            {"t": list(TABLES)},
        ).all()
        indexes = conn.execute(
            text(
                "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename = ANY(:t) "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
            ),
            {"t": list(TABLES)},
        ).all()
        # Load without indexes or constraints, then build them once: much faster.
        for table, name, _kind, _ in sorted(constraints, key=lambda c: c[2] != "f"):
            conn.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
        for _table, name, _ in indexes:
            conn.execute(text(f'DROP INDEX "{name}"'))
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        step = f"{SPAN_DAYS * 86400 / runs} seconds"
        bind = {"n": runs, "step": step}
        t0 = f"now() - interval '{SPAN_DAYS} days'"
        for label, sql in (("events", SEED_EVENTS), ("runs", SEED_RUNS), ("steps", SEED_STEPS),
                           ("attempts", SEED_ATTEMPTS)):
            started = time.perf_counter()
            statement = sql.replace(":t0", t0).replace(":step", "CAST(:step AS interval)")
            count = conn.execute(text(statement), bind).rowcount
            print(f"  seeded {count:>9,} {label:<8} in {time.perf_counter() - started:6.1f} s", flush=True)
        conn.execute(text("SELECT setval(pg_get_serial_sequence('events', 'id'), max(id)) FROM events"))
        started = time.perf_counter()
        conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        for table, name, _kind, definition in sorted(constraints, key=lambda c: c[2] == "f"):
            conn.execute(text(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'))
        for _table, _name, definition in indexes:
            conn.execute(text(definition))
        print(f"  built {len(constraints)} constraints and {len(indexes)} indexes in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return time.perf_counter() - began


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class Client:
    """One keep-alive HTTP connection to the served app."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, path: str) -> float:
        began = time.perf_counter()
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - began) * 1000
        if response.status != 200:
            raise SystemExit(f"GET {path} answered {response.status}: {body[:300]!r}")
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--reuse", action="store_true", help="keep an already seeded database")
    parser.add_argument("--keep", action="store_true", help="do not drop the database afterwards")
    args = parser.parse_args()

    url = database_url()
    if args.reuse and seeded_runs(url) == args.runs:
        print(f"reusing {DB_NAME} with {args.runs:,} runs")
    else:
        print(f"seeding {args.runs:,} runs into {DB_NAME} ...", flush=True)
        print(f"seeded in {seed(url, args.runs):.0f} s")

    from waitress.server import create_server

    settings = Settings(database_url=url, broker_url="memory://", workflows=("bench.dashboard_flows",))
    runtime = Runtime(settings)
    app = create_app({"RUNTIME": runtime, "API_TOKEN": "bench"})
    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    client = Client(server.effective_port)

    rng = random.Random(7)
    picks = [rng.randrange(1, args.runs + 1) for _ in range(args.requests + args.warmup)]
    ids = [str(run_uuid(g)) for g in picks]
    with runtime.db.connect() as conn:
        created = dict(
            conn.execute(text("SELECT id::text, created_at FROM runs WHERE id = ANY(CAST(:ids AS uuid[]))"),
                         {"ids": ids}).all()
        )
    cursors = [run_cursor(created[i], i) for i in ids]
    cases: list[tuple[str, object, bool]] = [
        ("page  /runs", lambda i: "/runs", True),
        ("page  /runs?status=failed", lambda i: "/runs?status=failed", True),
        ("page  /runs?workflow=bench-audit&status=failed",
         lambda i: "/runs?workflow=bench-audit&status=failed", True),
        ("page  /runs?cursor=<random>", lambda i: f"/runs?cursor={cursors[i]}", True),
        ("page  /runs/<random id>", lambda i: f"/runs/{ids[i]}", True),
        ("api   /api/runs", lambda i: "/api/runs", True),
        ("api   /api/runs?status=failed", lambda i: "/api/runs?status=failed", True),
        ("api   /api/runs?cursor=<random>", lambda i: f"/api/runs?cursor={cursors[i]}", True),
        ("api   /api/runs/<random id>", lambda i: f"/api/runs/{ids[i]}", True),
        ("api   /api/events", lambda i: "/api/events", False),
    ]
    print(f"\n{args.requests} requests each after {args.warmup} warm-up, one keep-alive connection "
          f"to waitress; {args.runs:,} runs, {4 * args.runs:,} steps")
    print(f"{'request':<50} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}   target p95 < {TARGET_P95_MS:g} ms")
    failed = False
    for label, path_of, targeted in cases:
        for i in range(args.warmup):
            client.get(path_of(args.requests + i))  # type: ignore[operator]
        times = [client.get(path_of(i)) for i in range(args.requests)]  # type: ignore[operator]
        p50, p95 = percentile(times, 50), percentile(times, 95)
        verdict = ("ok" if p95 < TARGET_P95_MS else "OVER") if targeted else "(not a target)"
        failed |= targeted and p95 >= TARGET_P95_MS
        print(f"{label:<50} {p50:8.1f} {p95:8.1f} {max(times):8.1f}   {verdict}", flush=True)
    first_scrape = client.get("/metrics")  # counts steps by workflow and status (then cached)
    for label, path, count in (("page  / (overview, last 24 h)", "/", 5),
                               ("/metrics (step counts cached)", "/metrics", 5)):
        times = [client.get(path) for _ in range(count)]
        print(f"{label:<50} {statistics.median(times):8.1f} {'':>8} {max(times):8.1f}   "
              f"(not a target; median of {count})")
    print(f"{'/metrics (first scrape: counts every step)':<50} {first_scrape:8.1f}")

    print("\nquery plans (EXPLAIN ANALYZE of each statement the list and detail requests send):")
    statements: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many):  # noqa: ANN001
        statements.append((statement, parameters))

    event.listen(runtime.db, "before_cursor_execute", capture)
    for path in ("/api/runs", "/api/runs?workflow=bench-audit&status=failed",
                 f"/api/runs?cursor={cursors[0]}", f"/api/runs/{ids[0]}"):
        client.get(path)
    event.remove(runtime.db, "before_cursor_execute", capture)
    scans = 0
    with runtime.db.connect() as conn:
        for statement, parameters in statements:
            plan = [row[0] for row in conn.exec_driver_sql("EXPLAIN ANALYZE " + statement, parameters)]
            summary = " ".join(statement.split())[:110]
            nodes = [line.strip().lstrip("-> ") for line in plan if "Scan" in line]
            timing = next((line for line in plan if line.startswith("Execution Time")), "")
            print(f"  {summary}...\n      {'; '.join(nodes)[:200]}  [{timing}]")
            scans += sum(f"Seq Scan on {t}" in line for line in plan for t in TABLES)
    server.close()
    runtime.close()
    if not args.keep:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        admin.dispose()
    if scans:
        raise SystemExit(f"{scans} statement(s) scan a whole table: an index is missing")
    if failed:
        raise SystemExit(f"some p95 is over the {TARGET_P95_MS:g} ms target")


if __name__ == "__main__":
    main()
