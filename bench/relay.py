"""Outbox relay: throughput of `relay_batch` vs a bare producer, and commit -> Kafka latency.

One in-memory Tansu broker, a fresh PostgreSQL database; the outbox is filled through the
engine (one succeeded attempt of a step that emits N events, the real path), then drained
by the relay (`acks="all"`, one request in flight, rows marked sent per batch). The baseline
is the same N messages sent by a plain kafka-python producer with `acks="all"` and the same
one request in flight, no database: the figure shows what the outbox costs (target: at
least 5,000 events/s).

Latency: an `orchestrator relay` process publishes the outbox while this script runs, one
at a time, steps that emit one event each (the real path: `execute`, the success and its
outbox row in one transaction) and a kafka-python consumer reads the topic. Latency is the
row's `created_at` (the success's clock, taken before its commit: the figure errs high) to
the moment the reader has the message (target p50 <= 20 ms); beside it, the same from the
message's Kafka timestamp (set by the relay's producer when it sends), which shows how
long the relay took to notice the row. Needs PostgreSQL on localhost and the Tansu binary.

    python bench/relay.py [--events 20000] [--batch 500] [--latency-events 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka.admin import NewTopic  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from bench import wait_flows  # noqa: E402
from bench.common import fresh_database, worker_env  # noqa: E402
from bench.engine_vs_celery import start, stop  # noqa: E402
from bench.waits import percentile  # noqa: E402
from orchestrator.db.session import session_factory  # noqa: E402
from orchestrator.dispatch import RecordingDispatcher  # noqa: E402
from orchestrator.dsl import Workflow  # noqa: E402
from orchestrator.engine import WorkflowEngine  # noqa: E402
from orchestrator.executor import Heartbeats, execute  # noqa: E402
from orchestrator.kafka import create_admin, create_consumer, create_producer  # noqa: E402
from orchestrator.registry import Registry  # noqa: E402
from orchestrator.relay import create_relay_producer, relay_batch  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.tansu import TansuBroker  # noqa: E402

DB_NAME = "orchestrator_bench_relay"
TOPIC = "bench.emitted"
#: Emitted events per second the relay publishes, at least.
TARGET_RATE = 5000.0
#: Milliseconds from a step's success commit to its emitted message in Kafka, p50, at most.
TARGET_P50_MS = 20.0


def fill(database_url: str, events: int, bootstrap: str) -> None:
    """Write `events` outbox rows the way steps do: attempts of 5,000 emits each."""
    flow = Workflow("bench-emitter")

    @flow.step
    def emit_all(ctx):  # noqa: ANN001, ANN202
        for n in range(ctx.input["first"], ctx.input["last"]):
            ctx.emit(TOPIC, {"n": n, "pad": "x" * 64}, key=f"k{n % 16}")

    registry = Registry()
    registry.add(flow)
    settings = Settings(database_url=database_url, kafka_bootstrap=bootstrap)
    db = create_engine(database_url)
    engine = WorkflowEngine(session_factory(db), registry, RecordingDispatcher(), settings)
    for first in range(0, events, 5000):
        run_id = engine.start_run("bench-emitter", {"first": first, "last": min(events, first + 5000)})
        assert execute(engine, Heartbeats(engine), run_id, "emit_all") == "succeeded"
    engine.hot_path.dispose()
    db.dispose()


def relay_seconds(database_url: str, bootstrap: str, batch: int) -> float:
    db = create_engine(database_url)
    producer = create_relay_producer(Settings(database_url=database_url, kafka_bootstrap=bootstrap))
    began = time.perf_counter()
    while relay_batch(db, producer, batch).claimed:
        pass
    elapsed = time.perf_counter() - began
    with db.connect() as conn:
        left = conn.scalar(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))
    producer.close(5)
    db.dispose()
    if left:
        raise SystemExit(f"{left} rows left unsent")
    return elapsed


def producer_seconds(bootstrap: str, events: int) -> float:
    producer = create_producer(Settings(kafka_bootstrap=bootstrap), max_in_flight_requests_per_connection=1)
    began = time.perf_counter()
    for n in range(events):
        producer.send(TOPIC + ".baseline", value=json.dumps({"n": n, "pad": "x" * 64}).encode(),
                      key=f"k{n % 16}".encode(), headers=[("orchestrator-event-id", str(uuid.uuid4()).encode())])
    producer.flush(60)
    elapsed = time.perf_counter() - began
    producer.close(5)
    return elapsed


def latency(database_url: str, bootstrap: str, count: int) -> tuple[list[float], list[float]]:
    """Milliseconds from outbox row written to message read, and to message timestamp, for
    `count` steps emitting one event each, run one at a time beside an `orchestrator relay`."""
    admin = create_admin(Settings(kafka_bootstrap=bootstrap))
    admin.create_topics([NewTopic(wait_flows.EMITTED, 1, 1)])
    admin.close()
    settings = Settings(database_url=database_url, kafka_bootstrap=bootstrap, workflows=("bench.wait_flows",))
    logs = Path(os.environ.get("BENCH_LOGS", "/tmp/orchestrator-bench"))
    logs.mkdir(parents=True, exist_ok=True)
    relay = start([sys.executable, "-m", "orchestrator", "--log-level=INFO", "relay"],
                  worker_env(settings, ORCHESTRATOR_KAFKA_BOOTSTRAP=bootstrap, PYTHONUNBUFFERED="1"),
                  logs / "relay.log", "relaying the outbox")
    read: dict[str, tuple[float, float]] = {}  # event id -> (read at, Kafka timestamp), seconds
    reading = threading.Event()
    stopping = threading.Event()

    def reader() -> None:
        consumer = create_consumer(Settings(kafka_bootstrap=bootstrap), group_id=None, fetch_max_wait_ms=5)
        consumer.subscribe([wait_flows.EMITTED])
        while not consumer.assignment():
            consumer.poll(timeout_ms=100)
        reading.set()
        while not stopping.is_set():
            for records in consumer.poll(timeout_ms=50).values():
                moment = time.time()
                for record in records:
                    event_id = dict(record.headers)["orchestrator-event-id"].decode()
                    read[event_id] = (moment, record.timestamp / 1000)
        consumer.close()

    thread = threading.Thread(target=reader)
    thread.start()
    db = create_engine(database_url)
    engine = WorkflowEngine(session_factory(db), Registry([wait_flows.emitter]), RecordingDispatcher(), settings)
    heartbeats = Heartbeats(engine)
    try:
        reading.wait(30)
        for n in range(count + 10):  # the first ten warm the connections up
            run_id = engine.start_run("bench-emitter", {"first": n, "count": 1})
            assert execute(engine, heartbeats, run_id, "emit_all") == "succeeded"
            with db.connect() as conn:
                event_id = str(conn.scalar(text("SELECT event_id FROM outbox WHERE run_id = :r"), {"r": run_id}))
            deadline = time.monotonic() + 30
            while event_id not in read:
                if time.monotonic() > deadline:
                    raise SystemExit(f"emitted event {event_id} did not reach Kafka within 30 s")
                time.sleep(0.001)
            time.sleep(0.01)  # the relay idles between two, as it does between quiet steps
        with db.connect() as conn:
            written = {str(e): c.timestamp() for e, c in conn.execute(
                text("SELECT event_id, created_at FROM outbox ORDER BY id OFFSET 10")
            )}
    finally:
        stopping.set()
        thread.join(10)
        stop(relay)
        engine.hot_path.dispose()
        db.dispose()
    to_read = [(read[e][0] - t) * 1000 for e, t in written.items()]
    to_sent = [(read[e][1] - t) * 1000 for e, t in written.items()]
    return to_read, to_sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--latency-events", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    database_url = fresh_database(DB_NAME)
    relays, bares = [], []
    with TansuBroker() as broker:
        for _ in range(args.rounds):
            with create_engine(database_url).begin() as conn:
                conn.execute(text("TRUNCATE attempts, steps, runs, outbox RESTART IDENTITY CASCADE"))
            fill(database_url, args.events, broker.bootstrap)
            relays.append(relay_seconds(database_url, broker.bootstrap, args.batch))
            bares.append(producer_seconds(broker.bootstrap, args.events))
    with create_engine(database_url).begin() as conn:
        conn.execute(text("TRUNCATE attempts, steps, runs, outbox RESTART IDENTITY CASCADE"))
    with TansuBroker() as broker:
        to_read, to_sent = latency(database_url, broker.bootstrap, args.latency_events)
    relay, bare = statistics.median(relays), statistics.median(bares)
    rate = args.events / relay
    print(f"{args.events} emitted events, relay batches of {args.batch}, Tansu, PostgreSQL, {args.rounds} rounds (median)")
    print(f"  relay (outbox -> Kafka, acks=all, marked sent): {rate:8.0f} events/s  ({relay:.2f} s)"
          f"  rounds {[round(args.events / r) for r in relays]}")
    print(f"  bare producer (acks=all, no database)         : {args.events / bare:8.0f} events/s  ({bare:.2f} s)"
          f"  rounds {[round(args.events / b) for b in bares]}")
    print(f"  ratio relay / bare producer: {bare / relay:.2f}  "
          f"(target >= {TARGET_RATE:,.0f} events/s: {'meets' if rate >= TARGET_RATE else 'MISSES'})")
    p50 = statistics.median(to_read)
    print(f"step success commit -> message in Kafka, {args.latency_events} steps one at a time, `orchestrator relay`:")
    print(f"  outbox row -> message read : p50 {p50:6.1f} ms  p95 {percentile(to_read, 0.95):6.1f} ms  "
          f"max {max(to_read):6.1f} ms  (target p50 <= {TARGET_P50_MS:g} ms: "
          f"{'meets' if p50 <= TARGET_P50_MS else 'MISSES'})")
    print(f"  outbox row -> relay's send : p50 {statistics.median(to_sent):6.1f} ms  "
          f"p95 {percentile(to_sent, 0.95):6.1f} ms  (Kafka timestamp, from the relay's producer)")


if __name__ == "__main__":
    main()
