"""`ctx.emit` end to end: real PostgreSQL, Tansu, worker, consumer and relay processes.

Only a succeeded attempt's emits reach Kafka, each with the relay's three headers; a
workflow triggered by the emitted topic starts once per emitted event however often the
relay sends it (the consumer dedupes on `orchestrator-event-id`); a success whose
transaction fails leaves no outbox row.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest
from sqlalchemy import create_engine, text

from orchestrator.executor import Heartbeats, execute
from tests.fixtures.config import KAFKA_TEST_WORKFLOWS, ROOT, kafka_env
from tests.fixtures.waiting import count, wait_for

WORKFLOWS = (*KAFKA_TEST_WORKFLOWS, "tests.emit_flows")


@pytest.fixture
def settings(kafka_settings):
    return kafka_settings.with_(workflows=WORKFLOWS)


@pytest.fixture
def emitted(kafka, topic_prefix) -> str:
    """The test's emitted topic, created before any consumer subscribes to it."""
    name = f"{topic_prefix}emitted"
    kafka.create_topic(name)
    return name


@pytest.fixture
def start_relay(settings, topic_prefix, redis_url, tmp_path):
    """Start real `orchestrator relay` processes; all are killed after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**extra_env: str) -> subprocess.Popen[bytes]:
        env = kafka_env(settings, topic_prefix, redis_url, ORCHESTRATOR_RELAY_INTERVAL="0.1", **extra_env)
        with (tmp_path / f"relay-{len(started)}.log").open("ab") as out:
            process = subprocess.Popen([sys.executable, "-m", "orchestrator", "relay"], env=env, cwd=ROOT,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def headers_of(record) -> dict[str, bytes]:  # noqa: ANN001 - a kafka-python ConsumerRecord
    return dict(record.headers or ())


def outbox(runtime) -> list[dict]:
    with runtime.db.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text("SELECT * FROM outbox ORDER BY id"))]


def reader_runs(runtime) -> int:
    return count(runtime, "SELECT count(*) FROM runs WHERE workflow = 'emitted-reader'")


def unsent(runtime) -> int:
    return count(runtime, "SELECT count(*) FROM outbox WHERE sent_at IS NULL")


def test_only_the_succeeded_attempts_emits_reach_kafka_with_the_relay_headers(
    runtime, kafka, emitted, start_worker, start_consumer, wait_for_run
):
    start_worker()
    start_consumer(ORCHESTRATOR_RELAY_INTERVAL="0.1")
    run_id = runtime.engine.start_run("emitter", {"count": 3, "fail_first": True, "topic": emitted})
    run = wait_for_run(run_id)
    assert run["status"] == "succeeded", run
    rows = outbox(runtime)
    assert [(r["attempt"], r["value"]["n"]) for r in rows] == [(2, 0), (2, 1), (2, 2)]
    wait_for(lambda: unsent(runtime) == 0, 30, 0.1, "the relay to send the outbox")

    records = kafka.read_all(emitted)
    assert [json.loads(r.value) for r in records] == [r["value"] for r in rows]
    assert all(json.loads(r.value)["attempt"] == 2 for r in records)
    for record, row in zip(records, rows, strict=True):
        headers = headers_of(record)
        assert headers["orchestrator-event-id"] == str(row["event_id"]).encode()
        assert headers["orchestrator-run-id"] == run_id.encode()
        assert headers["orchestrator-step"] == b"announce"
        assert headers["source"] == b"emitter" and headers["raw"] == b"\xff\x00"
        assert record.key == row["key"].encode()
    wait_for(lambda: reader_runs(runtime) == 3, 30, 0.1, "one reader run per emitted event")


def test_a_re_sent_emit_starts_the_downstream_workflow_once(
    runtime, kafka, emitted, start_worker, start_consumer, wait_for_run
):
    """What a relay that died after Kafka's acks but before its marks committed does: the
    rows are sent again. Kafka then holds duplicates, each with its original's event id."""
    start_worker()
    consumer = start_consumer(ORCHESTRATOR_RELAY_INTERVAL="0.1")
    run_id = runtime.engine.start_run("emitter", {"count": 4, "topic": emitted})
    assert wait_for_run(run_id)["status"] == "succeeded"
    wait_for(lambda: unsent(runtime) == 0 and reader_runs(runtime) == 4, 30, 0.1, "4 reader runs")
    with runtime.db.begin() as conn:
        conn.execute(text("UPDATE outbox SET sent_at = NULL"))
    wait_for(lambda: unsent(runtime) == 0, 30, 0.1, "the relay to send the outbox again")
    wait_for(lambda: len(kafka.read_all(emitted)) == 8, 30, 0.2, "8 messages in the emitted topic")
    time.sleep(1.0)  # time for the consumer to read (and skip) the copies

    records = kafka.read_all(emitted)
    ids = [headers_of(r)["orchestrator-event-id"] for r in records]
    assert ids[:4] == ids[4:] and len(set(ids)) == 4
    assert reader_runs(runtime) == 4
    assert count(runtime, "SELECT count(*) FROM events WHERE source_event_id IS NOT NULL") == 4
    assert consumer.stop() == 0, consumer.output()[-3000:]
    assert consumer.report()["redelivered"] == 4, consumer.output()[-3000:]
    assert "a re-send of emitted event" in consumer.output()


@pytest.mark.timeout(180)
def test_a_relay_killed_mid_batch_only_duplicates_and_the_reader_starts_once_per_event(
    runtime, kafka, emitted, start_worker, start_consumer, start_relay, wait_for_run
):
    total = 400
    start_worker()
    start_consumer(ORCHESTRATOR_CONSUME_RELAY="false")
    run_id = runtime.engine.start_run("emitter", {"count": total, "topic": emitted})
    assert wait_for_run(run_id)["status"] == "succeeded"
    assert unsent(runtime) == total  # no relay runs yet

    first = start_relay(ORCHESTRATOR_RELAY_BATCH_SIZE="10")
    wait_for(lambda: unsent(runtime) <= total - 60, 60, 0.01, "the first relay to send some")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    left = unsent(runtime)
    assert 0 < left < total, "the relay was not killed mid-way"
    start_relay(ORCHESTRATOR_RELAY_BATCH_SIZE="50")
    wait_for(lambda: unsent(runtime) == 0, 60, 0.1, "the second relay to send the rest")

    rows = {str(r["event_id"]): r for r in outbox(runtime)}
    records = kafka.read_all(emitted)
    assert len(records) >= total
    seen: dict[str, bytes] = {}
    first_order: dict[bytes | None, list[int]] = defaultdict(list)
    for record in records:
        event_id = headers_of(record)["orchestrator-event-id"].decode()
        assert event_id in rows
        if event_id in seen:
            assert record.value == seen[event_id]  # a duplicate is the same message
            continue
        seen[event_id] = record.value
        first_order[record.key].append(json.loads(record.value)["n"])
    assert set(seen) == set(rows)
    for key, numbers in first_order.items():
        assert numbers == sorted(numbers), f"key {key!r} out of order"
    wait_for(lambda: reader_runs(runtime) == total, 90, 0.2, "one reader run per emitted event")
    time.sleep(1.0)
    assert reader_runs(runtime) == total


def test_a_success_whose_transaction_fails_leaves_no_outbox_row(runtime, kafka, emitted):
    """A constraint trigger fails the success's COMMIT, after its outbox rows were written:
    the rows go with the rolled-back success. The next attempt's emits are the only ones."""
    admin = create_engine(runtime.settings.database_url)
    with admin.begin() as conn:
        conn.execute(text("""
            CREATE OR REPLACE FUNCTION test_refuse_success() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION 'refused at commit'; END $$ LANGUAGE plpgsql"""))
        conn.execute(text("""
            CREATE CONSTRAINT TRIGGER test_refuse_success AFTER UPDATE ON steps
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            WHEN (NEW.status = 'succeeded' AND NEW.name = 'announce')
            EXECUTE FUNCTION test_refuse_success()"""))
    try:
        run_id = runtime.engine.start_run("emitter", {"count": 2, "topic": emitted})
        heartbeats = Heartbeats(runtime.engine)
        said = execute(runtime.engine, heartbeats, run_id, "announce")
        assert said.startswith("failed: the outcome of step 'announce' could not be stored"), said
        assert outbox(runtime) == []
        assert count(runtime, "SELECT count(*) FROM steps WHERE name = 'announce' AND status = 'retrying'") == 1
    finally:
        with admin.begin() as conn:
            conn.execute(text("DROP TRIGGER IF EXISTS test_refuse_success ON steps"))
            conn.execute(text("DROP FUNCTION IF EXISTS test_refuse_success()"))
        admin.dispose()
    assert execute(runtime.engine, heartbeats, run_id, "announce") == "succeeded"
    assert [(r["attempt"], r["value"]["n"]) for r in outbox(runtime)] == [(2, 0), (2, 1)]




def _metric(body: str, name: str) -> float | None:
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def test_metrics_show_the_backlog_and_prune_removes_only_sent_rows(runtime, kafka, emitted):
    """Without a relay the outbox only grows: /metrics shows it; prune keeps unsent rows."""
    from datetime import UTC, datetime, timedelta

    from orchestrator.retention import prune
    from tests.webtools import make_app

    heartbeats = Heartbeats(runtime.engine)
    for _ in range(2):
        run_id = runtime.engine.start_run("emitter", {"count": 3, "topic": emitted})
        assert execute(runtime.engine, heartbeats, run_id, "announce") == "succeeded"
    with runtime.db.begin() as conn:
        conn.execute(text("UPDATE outbox SET created_at = now() - interval '2 hours'"))
        conn.execute(text("UPDATE outbox SET sent_at = now() - interval '1 hour' WHERE id IN "
                          "(SELECT id FROM outbox ORDER BY id LIMIT 2)"))
    client = make_app(runtime).test_client()
    body = client.get("/metrics").get_data(as_text=True)
    assert _metric(body, "orchestrator_outbox_backlog") == 4
    assert 7100 < (_metric(body, "orchestrator_relay_lag_seconds") or 0) < 7300

    report = prune(runtime.db, datetime.now(UTC) - timedelta(minutes=30))
    assert report.outbox == 2 and "2 sent emitted event(s)" in report.summary()
    assert unsent(runtime) == 4 and len(outbox(runtime)) == 4


@pytest.mark.orchestrator(workflows=["tests.emit_flows"])
def test_the_relay_publishes_a_sqlite_outbox_too(orchestrator_test, kafka, emitted, kafka_settings):
    """The dev database (`orchestrator dev`): the same relay, without PostgreSQL's locks."""
    from orchestrator.relay import create_relay_producer, relay_batch

    run = orchestrator_test.start("emitter", {"count": 5, "topic": emitted})
    assert run.status == "succeeded"
    producer = create_relay_producer(kafka_settings)
    try:
        assert relay_batch(orchestrator_test.db, producer, 3).sent == 3
        assert relay_batch(orchestrator_test.db, producer, 3).sent == 2
        assert relay_batch(orchestrator_test.db, producer, 3).claimed == 0
    finally:
        producer.close(5)
    assert all(e.sent for e in orchestrator_test.emitted)
    records = kafka.read_all(emitted)
    assert [headers_of(r)["orchestrator-event-id"].decode() for r in records] == [
        e.event_id for e in orchestrator_test.emitted
    ]
