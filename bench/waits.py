"""100,000 open event waits on one topic: consumer throughput and wait-to-successor latency,
each beside the same measure with no open waits.

One script, Tansu, a fresh PostgreSQL database. The open waits are written in bulk by SQL
(runs of `bench-waiter` waiting on `bench.payments` for `order.id` values no benchmark event
carries, with a 24 h timeout, and their `wait_keys` row), so the intake probes
`ix_waits_open_correlation` for every event and finds nothing:

1. throughput: N events on `bench.payments` (4 partitions) read by the real consumer
   (`EventConsumer`, in this process, as bench/consumer_throughput.py does), its own group
   per round, timed from its first message to its last; rounds alternate without and with
   the open waits; target: with >= 0.8 x without;
2. latency: an `orchestrator consume` process and an `orchestrator worker` (2 processes,
   with its recovery process); runs of `bench-waiter` are started, then their payment
   events are published one at a time, each once the previous run's `ship` step started.
   Latency is the event's `received_at` (set when its batch's transaction begins, so before
   the commit: the figure errs high) to the `ship` attempt's `started_at`; target p50 <= 50 ms.
   Also shown: publish -> started, which adds the Kafka round trip.

Needs PostgreSQL and Redis on localhost and the Tansu binary.

    python bench/waits.py [--open 100000] [--events 20000] [--rounds 3] [--latency-events 200]
"""

from __future__ import annotations

import argparse
import json
import os
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

from bench import wait_flows  # noqa: E402
from bench.common import fresh_database, worker_env  # noqa: E402
from bench.consumer_throughput import orchestrator_consumer  # noqa: E402
from bench.engine_vs_celery import start, stop  # noqa: E402
from orchestrator.kafka import create_admin, create_producer  # noqa: E402
from orchestrator.registry import Registry  # noqa: E402
from orchestrator.runtime import Runtime  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.tansu import TansuBroker  # noqa: E402

DB_NAME = "orchestrator_bench_waits"
BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/11")
TOPIC = wait_flows.PAYMENTS
#: Throughput with the open waits over throughput without, at least.
TARGET_RATIO = 0.8
#: Milliseconds from an event's commit to its successor step's start, p50, at most.
TARGET_P50_MS = 50.0

_EMPTY = "TRUNCATE attempts, steps, waits, wait_keys, runs, events, outbox RESTART IDENTITY CASCADE"
# Runs waiting for order ids -1 .. -n (events carry 0 and up): the real correlation hash of
# each value (`waits.correlation_hash([value])`), a 24 h timer each, as opened waits have.
_FILL_RUNS = """
INSERT INTO runs (id, workflow, status, input, created_at, started_at, version)
SELECT gen_random_uuid(), 'bench-waiter', 'running', jsonb_build_object('order_id', -n), now(), now(), :version
FROM generate_series(1, :n) AS n
"""
_FILL_WAITS = """
INSERT INTO waits (run_id, step, kind, status, topic, paths, correlation, spec, opened_at, due_at)
SELECT id, 'payment', 'event', 'open', CAST(:topic AS text), 'order.id',
       encode(sha256(convert_to('[' || (input->>'order_id') || ']', 'UTF8')), 'hex'),
       jsonb_build_object('topic', CAST(:topic AS text), 'match', jsonb_build_object('type', 'payment.confirmed'),
                          'correlate', jsonb_build_object('order.id', (input->>'order_id')::int),
                          'timeout', 86400, 'on_timeout', 'fail', 'lookback', null),
       now(), now() + interval '24 hours'
FROM runs WHERE workflow = 'bench-waiter'
"""


def reset(database_url: str, open_waits: int) -> None:
    """Empty the tables; then, with `open_waits`, that many open waits nothing will match."""
    db = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with db.connect() as conn:
        conn.execute(text(_EMPTY))
        if open_waits:
            conn.execute(text(_FILL_RUNS), {"n": open_waits, "version": wait_flows.waiter.version})
            conn.execute(text(_FILL_WAITS), {"topic": TOPIC})
            conn.execute(text("INSERT INTO wait_keys (topic, paths) VALUES (:topic, 'order.id')"),
                         {"topic": TOPIC})
        conn.execute(text("VACUUM ANALYZE runs"))
        conn.execute(text("VACUUM ANALYZE waits"))
        conn.execute(text("VACUUM ANALYZE events"))
    db.dispose()


def payment(order_id: int) -> bytes:
    return json.dumps({"type": "payment.confirmed", "order": {"id": order_id, "amount": 150},
                       "source": "bench"}).encode()


def create_topic(bootstrap: str, partitions: int) -> None:
    admin = create_admin(Settings(kafka_bootstrap=bootstrap))
    admin.create_topics([NewTopic(TOPIC, partitions, 1)])
    admin.close()


def publish_all(bootstrap: str, events: int) -> None:
    producer = create_producer(Settings(kafka_bootstrap=bootstrap), linger_ms=20, batch_size=256 * 1024)
    for i in range(events):
        producer.send(TOPIC, payment(i), key=str(i).encode())
    producer.flush()
    producer.close()


def throughput(database_url: str, open_waits: int, events: int, rounds: int, batch_size: int) -> dict[int, list[float]]:
    """Events/s of the consumer per round, without open waits and with `open_waits`; the
    order alternates (A B, B A, ...) so a machine getting busier favours neither."""
    rates: dict[int, list[float]] = {0: [], open_waits: []}
    registry = Registry([wait_flows.waiter])
    with TansuBroker() as broker:
        create_topic(broker.bootstrap, 4)
        publish_all(broker.bootstrap, events)
        for n in range(rounds):
            for waits in (0, open_waits) if n % 2 == 0 else (open_waits, 0):
                reset(database_url, waits)
                settings = Settings(
                    database_url=database_url, broker_url=BROKER, workflows=(),
                    kafka_bootstrap=broker.bootstrap, kafka_group=f"bench-waits-{uuid.uuid4().hex[:6]}",
                    kafka_session_timeout=6.0, kafka_batch_size=batch_size,
                )
                rate, recorded, _, _ = orchestrator_consumer(settings, registry, events, profile=False)
                if recorded != events:
                    raise SystemExit(f"round {n + 1} with {waits} open waits recorded {recorded} of {events} events")
                rates[waits].append(rate)
                print(f"  round {n + 1}, {waits:>7,} open waits: {rate:8,.0f} events/s", flush=True)
    return rates


_BREAKDOWN = text("""
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM s.queued_at - e.received_at)),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM a.started_at - s.queued_at))
FROM waits w JOIN events e ON e.id = w.event_id
JOIN steps s ON s.run_id = w.run_id AND s.name = 'ship' JOIN attempts a ON a.step_id = s.id
WHERE w.status = 'matched'
""")


def latency(settings: Settings, open_waits: int, count: int) -> tuple[list[float], list[float], tuple[float, float]]:
    """Milliseconds event received -> `ship` started, and publish -> started, per event; and
    the medians of the two legs: received -> `ship` queued (the intake's transaction, up
    to `now` of its matching), queued -> started (the commit, Celery, the worker's claim)."""
    reset(settings.database_url, open_waits)
    rt = Runtime(settings)
    producer = create_producer(settings, linger_ms=0)
    base = 10_000_000 * (1 + bool(open_waits))  # ids no other round used
    runs = [rt.engine.start_run("bench-waiter", {"order_id": base + i}) for i in range(count + 10)]
    started_sql = text(
        "SELECT a.started_at FROM attempts a JOIN steps s ON s.id = a.step_id "
        "WHERE s.run_id = :rid AND s.name = 'ship'"
    )
    published: dict[str, float] = {}
    seen: dict[str, float] = {}
    try:
        for i, run_id in enumerate(runs):
            sent = time.time()
            producer.send(TOPIC, payment(base + i), key=str(base + i).encode()).get(10)
            deadline = time.monotonic() + 30
            while True:
                with rt.db.connect() as conn:
                    started = conn.scalar(started_sql, {"rid": run_id})
                if started is not None:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"the ship step of run {run_id} did not start within 30 s")
                time.sleep(0.002)
            if i >= 10:  # the first ten warm the connections up
                published[run_id] = sent
                seen[run_id] = started.timestamp()
        with rt.db.connect() as conn:
            received = dict(conn.execute(text(
                "SELECT CAST(w.run_id AS text), e.received_at FROM waits w JOIN events e ON e.id = w.event_id "
                "WHERE w.status = 'matched'"
            )).all())
            legs = tuple(1000 * float(x) for x in conn.execute(_BREAKDOWN).one())
    finally:
        producer.close()
        rt.close()
    commit_ms = [(seen[r] - received[r].timestamp()) * 1000 for r in seen]
    publish_ms = [(seen[r] - published[r]) * 1000 for r in seen]
    return commit_ms, publish_ms, legs  # type: ignore[return-value]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure_latency(database_url: str, open_waits: int, count: int) -> dict[int, tuple[list[float], list[float]]]:
    redis.Redis.from_url(BROKER).flushdb()
    logs = Path(os.environ.get("BENCH_LOGS", "/tmp/orchestrator-bench"))
    logs.mkdir(parents=True, exist_ok=True)
    found: dict[int, tuple[list[float], list[float]]] = {}
    with TansuBroker() as broker:
        create_topic(broker.bootstrap, 4)
        settings = Settings(
            database_url=database_url, broker_url=BROKER, workflows=("bench.wait_flows",),
            kafka_bootstrap=broker.bootstrap, kafka_group=f"bench-waits-{uuid.uuid4().hex[:6]}",
        )
        reset(database_url, 0)
        env = worker_env(settings, ORCHESTRATOR_KAFKA_BOOTSTRAP=broker.bootstrap,
                         ORCHESTRATOR_KAFKA_GROUP=settings.kafka_group,
                         ORCHESTRATOR_KAFKA_SESSION_TIMEOUT="6", PYTHONUNBUFFERED="1")
        worker = start([sys.executable, "-m", "orchestrator", "--log-level=WARNING", "worker",
                        "--concurrency=2", "--hostname=waits@bench"],
                       env, logs / "waits-worker.log", "worker serving queues")
        consumer = start([sys.executable, "-m", "orchestrator", "--log-level=INFO", "consume"],
                         env, logs / "waits-consumer.log", f"partitions assigned: {TOPIC}[")
        try:
            time.sleep(2)  # let the worker's pool and the consumer's fetches settle
            for waits in (0, open_waits):
                found[waits] = latency(settings, waits, count)
                commit_ms = found[waits][0]
                print(f"  {waits:>7,} open waits: p50 {statistics.median(commit_ms):6.1f} ms", flush=True)
        finally:
            stop(consumer)
            stop(worker)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--open", type=int, default=100_000, help="open waits nothing matches")
    parser.add_argument("--events", type=int, default=20_000, help="events per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500, help="messages per poll")
    parser.add_argument("--latency-events", type=int, default=200)
    parser.add_argument("--only", choices=("throughput", "latency"), help="run one half")
    args = parser.parse_args()

    database_url = fresh_database(DB_NAME)
    rates = lat = None
    if args.only != "latency":
        print(f"throughput: {args.events:,} events on {TOPIC}, {args.rounds} rounds each", flush=True)
        rates = throughput(database_url, args.open, args.events, args.rounds, args.batch_size)
    if args.only != "throughput":
        print(f"latency: {args.latency_events} events one at a time", flush=True)
        lat = measure_latency(database_url, args.open, args.latency_events)
    redis.Redis.from_url(BROKER).flushdb()

    print()
    print(f"{args.open:,} open waits on {TOPIC} that no event matches")
    if rates:
        without, with_ = statistics.median(rates[0]), statistics.median(rates[args.open])
        ratio = with_ / without
        print(f"  consumer throughput, {args.rounds} rounds each (median), {args.events:,} events a round:")
        print(f"    {0:>7,} open waits: {without:8,.0f} events/s  rounds {[round(r) for r in rates[0]]}")
        print(f"    {args.open:>7,} open waits: {with_:8,.0f} events/s  rounds {[round(r) for r in rates[args.open]]}")
        print(f"    ratio with / without: {ratio:.2f}  "
              f"(target >= {TARGET_RATIO}: {'meets' if ratio >= TARGET_RATIO else 'MISSES'})")
    if lat:
        print(f"  event commit -> successor step started, {args.latency_events} events one at a time:")
        for waits in (0, args.open):
            commit_ms, publish_ms, (intake, dispatch) = lat[waits]
            print(f"    {waits:>7,} open waits: p50 {statistics.median(commit_ms):6.1f} ms  "
                  f"p95 {percentile(commit_ms, 0.95):6.1f} ms  max {max(commit_ms):6.1f} ms  "
                  f"(p50 legs: intake {intake:5.1f} ms, commit + Celery + claim {dispatch:5.1f} ms; "
                  f"publish -> started p50 {statistics.median(publish_ms):6.1f} ms)")
        p50 = statistics.median(lat[args.open][0])
        base = statistics.median(lat[0][0])
        print(f"    ratio p50 with / without: {p50 / base:.2f}  "
              f"(target p50 <= {TARGET_P50_MS:g} ms: {'meets' if p50 <= TARGET_P50_MS else 'MISSES'})")

if __name__ == "__main__":
    main()
