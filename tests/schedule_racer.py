"""A scheduler process for the race test. It connects, prints `ready`, reads `start until`
(Unix times) from stdin, then from `start` to `until` calls the scheduler's pass as fast as
it goes (no advisory lock: only the runs' unique key stands between two of these and a
double run), and prints what it did as one JSON line."""

from __future__ import annotations

import json
import sys
import time

from sqlalchemy import text

from orchestrator.runtime import Runtime
from orchestrator.scheduler import fire_due
from orchestrator.settings import Settings


def main() -> None:
    rt = Runtime(Settings.from_env())
    rt.engine.record_versions()  # what a first pass would do slowly, done before the race
    with rt.db.connect() as conn:
        conn.execute(text("SELECT 1"))
    print("ready", flush=True)
    start, until = (float(x) for x in sys.stdin.readline().split())
    started: list[str] = []
    passes = duplicates = errors = 0
    time.sleep(max(0.0, start - time.time()))
    while time.time() < until:
        result = fire_due(rt.engine)
        started += result.started
        duplicates += result.duplicates
        errors += result.errors
        passes += 1
        time.sleep(0.005)
    rt.close()
    print(json.dumps({"started": started, "passes": passes, "duplicates": duplicates, "errors": errors}))


if __name__ == "__main__":
    main()
