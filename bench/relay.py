"""Outbox relay throughput: N emitted events published by `relay_batch` vs a bare producer.

One in-memory Tansu broker, a fresh PostgreSQL database; the outbox is filled through the
engine (one succeeded attempt of a step that emits N events, the real path), then drained
by the relay (`acks="all"`, one request in flight, rows marked sent per batch). The baseline
is the same N messages sent by a plain kafka-python producer with `acks="all"` and the same
one request in flight, no database: the figure shows what the outbox costs. Needs
PostgreSQL on localhost and the Tansu binary.

    python bench/relay.py [--events 20000] [--batch 500]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka import KafkaProducer  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from bench.common import fresh_database  # noqa: E402
from orchestrator.db.session import session_factory  # noqa: E402
from orchestrator.dispatch import RecordingDispatcher  # noqa: E402
from orchestrator.dsl import Workflow  # noqa: E402
from orchestrator.engine import WorkflowEngine  # noqa: E402
from orchestrator.executor import Heartbeats, execute  # noqa: E402
from orchestrator.registry import Registry  # noqa: E402
from orchestrator.relay import create_relay_producer, relay_batch  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.tansu import TansuBroker  # noqa: E402

DB_NAME = "orchestrator_bench_relay"
TOPIC = "bench.emitted"


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
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                             max_in_flight_requests_per_connection=1)
    began = time.perf_counter()
    for n in range(events):
        producer.send(TOPIC + ".baseline", value=json.dumps({"n": n, "pad": "x" * 64}).encode(),
                      key=f"k{n % 16}".encode(), headers=[("orchestrator-event-id", str(uuid.uuid4()).encode())])
    producer.flush(60)
    elapsed = time.perf_counter() - began
    producer.close(5)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    database_url = fresh_database(DB_NAME)
    with TansuBroker() as broker:
        fill(database_url, args.events, broker.bootstrap)
        relay = relay_seconds(database_url, broker.bootstrap, args.batch)
        bare = producer_seconds(broker.bootstrap, args.events)
    print(f"{args.events} emitted events, relay batches of {args.batch}, Tansu, PostgreSQL")
    print(f"  relay (outbox -> Kafka, acks=all, marked sent): {args.events / relay:8.0f} events/s  ({relay:.2f} s)")
    print(f"  bare producer (acks=all, no database)         : {args.events / bare:8.0f} events/s  ({bare:.2f} s)")
    print(f"  ratio relay / bare producer: {bare / relay:.2f}")


if __name__ == "__main__":
    main()
