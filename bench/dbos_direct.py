"""DBOS Transact (pip package `dbos`) called directly: `--runs` workflows of three no-op steps,
from `--concurrency` threads of this process, on PostgreSQL. Prints one JSON line per round:
seconds, and the CPU seconds of this process and of its PostgreSQL backends.

Run by `bench/engine_vs_celery.py --dbos` (a peer beside plain Celery and the orchestrator);
alone: python bench/dbos_direct.py --url postgresql://postgres@127.0.0.1:5432/NAME
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cpu import Meter  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    from dbos import DBOS, DBOSConfig

    DBOS(config=DBOSConfig(name="bench-dbos-direct", system_database_url=args.url, log_level="WARNING"))

    @DBOS.step()
    def noop() -> None:
        return None

    @DBOS.workflow()
    def chain() -> None:
        noop()
        noop()
        noop()

    DBOS.launch()
    meter_db = create_engine(args.url.replace("postgresql://", "postgresql+psycopg://", 1),
                             connect_args={"application_name": "bench-meter"})
    # DBOS names its own connections: its backends are those of its database (its own).
    meter = Meter(os.getpid(), meter_db, "db:" + meter_db.url.database)  # this process leads its session
    try:
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda _: chain(), range(20)))  # warm-up
            for _ in range(args.rounds):
                meter.start()
                began = time.perf_counter()
                list(pool.map(lambda _: chain(), range(args.runs)))
                took = time.perf_counter() - began
                print(json.dumps({"seconds": took, **meter.stop()}), flush=True)
    finally:
        DBOS.destroy()
        meter_db.dispose()


if __name__ == "__main__":
    main()
