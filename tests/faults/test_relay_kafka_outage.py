"""The relay and Kafka under faults.

- Kafka goes away while steps emit: the steps still succeed, the outbox grows, the consumer
  (whose thread the relay is) keeps running, and the outbox drains once Kafka is back.
- The relay (`orchestrator relay`, apart from the consumer) is SIGKILLed inside a batch,
  after Kafka took the messages and before the outbox marked them sent, both before and
  after a Kafka restart: nothing is lost, the copies in Kafka are the rows sent again with
  their own event id, and the workflow triggered by the emitted topic starts once per
  emitted event (the consumer dedupes on `orchestrator-event-id`).

The broker is a private, in-memory Tansu: after its restart the tests create the emitted
topic again (a real Kafka keeps it). The first test does not need the messages lost with
it; the second writes the log back at its offsets, as a real Kafka would have kept it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from sqlalchemy import text

from orchestrator.emits import EVENT_ID_HEADER
from tests.faults.harness import (
    OUTBOX_SLACK,
    Figures,
    assert_api_matches_database,
    audit_outbox,
    audit_waits,
    live_runs,
    publish_figures,
    rows,
)
from tests.fixtures.config import ROOT, kafka_env
from tests.fixtures.kafka import Kafka
from tests.fixtures.waiting import count, wait_for


@pytest.fixture
def kafka_bootstrap(private_kafka) -> str:
    return private_kafka.bootstrap


@pytest.fixture
def settings(settings):
    return settings.with_(workflows=(*settings.workflows, "tests.emit_flows"))


def create_topic(bootstrap: str, name: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def unsent(runtime) -> int:
    return count(runtime, "SELECT count(*) FROM outbox WHERE sent_at IS NULL")


@pytest.mark.timeout(180)
def test_kafka_down_the_outbox_grows_and_drains_when_kafka_returns(
    runtime, settings, private_kafka, topic_prefix, start_worker, start_consumer, wait_for_run
):
    emitted = f"{topic_prefix}emitted"
    create_topic(private_kafka.bootstrap, emitted)
    start_worker()
    consumer = start_consumer(ORCHESTRATOR_RELAY_INTERVAL="0.1")
    before = runtime.engine.start_run("emitter", {"count": 3, "topic": emitted})
    assert wait_for_run(before)["status"] == "succeeded"
    wait_for(lambda: unsent(runtime) == 0, 30, 0.1, "the relay to send the first emits")

    private_kafka.kill()
    during = [runtime.engine.start_run("emitter", {"count": 5, "topic": emitted}) for _ in range(4)]
    for run_id in during:
        assert wait_for_run(run_id)["status"] == "succeeded"  # steps need no Kafka to emit
    try:
        wait_for(lambda: "relay: cannot publish the outbox" in consumer.output(), 30, 0.2, "the relay to notice")  # within one SEND_TIMEOUT
    except AssertionError:
        raise AssertionError(consumer.output()[-4000:]) from None
    assert unsent(runtime) == 20
    assert consumer.process.poll() is None, consumer.output()[-3000:]

    private_kafka.start()
    create_topic(private_kafka.bootstrap, emitted)
    wait_for(lambda: unsent(runtime) == 0, 90, 0.2, "the outbox to drain after Kafka returned")
    assert consumer.process.poll() is None, consumer.output()[-3000:]
    assert "relay: publishing again" in consumer.output()

    with runtime.db.connect() as conn:
        wanted = {str(e) for (e,) in conn.execute(
            text("SELECT event_id FROM outbox WHERE run_id = ANY(CAST(:ids AS uuid[]))"), {"ids": during})}
    client = Kafka(private_kafka.bootstrap)
    try:
        records = client.read_all(emitted)
    finally:
        client.close()
    got = {dict(r.headers)["orchestrator-event-id"].decode() for r in records}
    assert wanted <= got and len(wanted) == 20
    assert {json.loads(r.value)["run"] for r in records} == set(during)
    # The reader workflow saw every emit made during the outage, once each.
    wait_for(lambda: count(runtime, "SELECT count(*) FROM runs WHERE workflow = 'emitted-reader'") >= 20,
             60, 0.2, "reader runs of the emits made during the outage")


# -- the relay SIGKILLed mid-batch, Kafka restarted ------------------------------------------------


@dataclass
class RelayProcess:
    """An `orchestrator relay` process (the consumer then runs with --no-relay)."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def start_relay(settings, topic_prefix, redis_url, tmp_path) -> Iterator[Callable[[], RelayProcess]]:
    started: list[RelayProcess] = []

    def start() -> RelayProcess:
        log = tmp_path / f"relay-{len(started) + 1}.log"
        env = kafka_env(settings, topic_prefix, redis_url, ORCHESTRATOR_RELAY_BATCH_SIZE=str(RELAY_BATCH),
                        ORCHESTRATOR_RELAY_INTERVAL="0.1")
        with log.open("wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "orchestrator", "relay"], env=env, cwd=ROOT,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        relay = RelayProcess(process, log)
        started.append(relay)
        wait_for(lambda: "relaying the outbox" in relay.output() or process.poll() is not None, 60, 0.05,
                 "the relay to start")
        assert process.poll() is None, relay.output()[-3000:]
        return relay

    yield start
    for relay in started:
        if relay.process.poll() is None:
            relay.kill()


class LogEnd:
    """The end offset of a topic's partitions, summed: how many messages Kafka holds."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        partitions = self.consumer.partitions_for_topic(topic) or set()
        assert partitions, f"topic {topic} has no partitions"
        self.partitions = [TopicPartition(topic, p) for p in partitions]

    def __call__(self) -> int:
        return sum(self.consumer.end_offsets(self.partitions).values())

    def close(self) -> None:
        self.consumer.close()


def restore_log(bootstrap: str, topic: str, records: list[Any]) -> None:
    """Write `records` (read from the partition-0 log of `topic` before the broker lost it)
    back at their offsets, as a real Kafka would have kept them: the consumer recognises an
    event by (topic, partition, offset) too, so a new message must not reuse an old offset."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_in_flight_requests_per_connection=1)
    try:
        futures = [(r.offset, producer.send(topic, value=r.value, key=r.key, headers=r.headers, partition=0))
                   for r in records]
        producer.flush(timeout=30)
        moved = [(old, f.get(timeout=0).offset) for old, f in futures if f.get(timeout=0).offset != old]
        assert not moved, f"restored messages landed at other offsets (old, new): {moved[:5]}"
    finally:
        producer.close(timeout=5)


def sent(runtime) -> int:
    return count(runtime, "SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL")


def messages(bootstrap: str, topic: str) -> list[Any]:
    client = Kafka(bootstrap)
    try:
        return client.read_all(topic)
    finally:
        client.close()


def event_id(record: Any) -> str:
    found = [v.decode() for k, v in record.headers if k == EVENT_ID_HEADER]
    assert len(found) == 1, f"message at offset {record.offset} has {len(found)} {EVENT_ID_HEADER} headers"
    return found[0]


def unsent_ids(runtime) -> set[str]:
    with runtime.db.connect() as conn:
        return {str(e) for (e,) in conn.execute(text("SELECT event_id FROM outbox WHERE sent_at IS NULL"))}


def kill_relay_mid_batch(runtime, start_relay, bootstrap: str, topic: str) -> tuple[int, int]:
    """Start relays and SIGKILL each inside a batch, once Kafka holds messages of it that the
    outbox does not mark sent (they must be sent again, with the same event id), until one
    dies so. Returns (such messages, relays killed)."""
    log_end = LogEnd(bootstrap, topic)
    try:
        for tries in range(1, 6):
            in_kafka, marked = log_end(), sent(runtime)
            relay = start_relay()
            wait_for(lambda in_kafka=in_kafka, marked=marked: log_end() - in_kafka > sent(runtime) - marked, 30, 0.001,
                     "Kafka to hold messages the outbox does not mark sent")
            relay.kill()
            caught = {event_id(r) for r in messages(bootstrap, topic)} & unsent_ids(runtime)
            if caught:
                return len(caught), tries
            assert unsent_ids(runtime), "the relays sent the whole outbox before one was caught mid-batch"
    finally:
        log_end.close()
    raise AssertionError("5 relays SIGKILLed inside a batch, none after Kafka acknowledged part of it")


def emit(runtime, wait_for_run, runs: int, topic: str) -> list[str]:
    started = [runtime.engine.start_run("emitter", {"count": PER_RUN, "topic": topic}) for _ in range(runs)]
    for run_id in started:
        assert wait_for_run(run_id, timeout=60)["status"] == "succeeded"
    return started


def readers(runtime) -> int:
    return count(runtime, "SELECT count(*) FROM runs WHERE workflow = 'emitted-reader'")


#: Emits per emitter run, runs before and during the Kafka outage, rows per relay batch.
PER_RUN, BEFORE, DURING, RELAY_BATCH = 10, 30, 30, 50


@pytest.mark.timeout(240)
def test_relay_sigkilled_mid_batch_and_kafka_restarted_lose_nothing_and_start_each_reader_once(
    runtime, settings, private_kafka, topic_prefix, start_worker, start_consumer, start_relay, wait_for_run
):
    clock = time.monotonic()
    emitted = f"{topic_prefix}emitted"
    create_topic(private_kafka.bootstrap, emitted)
    start_worker(concurrency=3)
    consumer = start_consumer(ORCHESTRATOR_CONSUME_RELAY="false")  # the relays run apart

    # Kafka up: a relay dies mid-batch; the next one sends the whole outbox.
    emit(runtime, wait_for_run, BEFORE, emitted)
    assert unsent(runtime) == BEFORE * PER_RUN
    caught_before, killed_before = kill_relay_mid_batch(runtime, start_relay, private_kafka.bootstrap, emitted)
    relay = start_relay()
    wait_for(lambda: unsent(runtime) == 0, 60, 0.1, "the relay to send the outbox")
    # The in-memory broker loses its log when restarted (a real Kafka keeps it): read it now,
    # to put it back after the restart, and let a reader run start from every message.
    first_log = messages(private_kafka.bootstrap, emitted)
    wait_for(lambda: readers(runtime) == BEFORE * PER_RUN, 60, 0.1, "a reader run per emitted event")

    # Kafka down: steps go on emitting; the relay, failing, is killed; Kafka comes back empty.
    private_kafka.kill()
    emit(runtime, wait_for_run, DURING, emitted)
    wait_for(lambda: "relay: cannot publish the outbox" in relay.output(), 30, 0.2, "the relay to notice")
    relay.kill()
    private_kafka.start()
    create_topic(private_kafka.bootstrap, emitted)
    restore_log(private_kafka.bootstrap, emitted, first_log)
    caught_after, killed_after = kill_relay_mid_batch(runtime, start_relay, private_kafka.bootstrap, emitted)
    start_relay()
    wait_for(lambda: unsent(runtime) == 0, 60, 0.1, "the relay to send the outbox grown during the outage")
    log = messages(private_kafka.bootstrap, emitted)
    assert [(r.offset, r.value) for r in log[:len(first_log)]] == [(r.offset, r.value) for r in first_log]
    total = (BEFORE + DURING) * PER_RUN
    try:
        wait_for(lambda: readers(runtime) == total, 90, 0.1, "a reader run per emitted event")
    except AssertionError:
        raise AssertionError(f"{readers(runtime)} reader runs of {total}\n{consumer.output()[-3000:]}") from None

    # Nothing lost: every row sent, and each in Kafka; copies only of one row, same event id.
    with runtime.db.connect() as conn:
        outbox = {str(r.event_id): r for r in conn.execute(text(
            "SELECT event_id, run_id, step, key, value FROM outbox WHERE sent_at IS NOT NULL"))}
    assert len(outbox) == total and unsent(runtime) == 0
    copies: Counter[str] = Counter()
    for record in log:
        row = outbox.get(event_id(record))
        assert row is not None, f"a message in Kafka with an event id no outbox row has: {event_id(record)}"
        headers = dict(record.headers)
        assert (record.key.decode(), json.loads(record.value), headers["orchestrator-run-id"].decode(),
                headers["orchestrator-step"].decode()) == (row.key, row.value, str(row.run_id), row.step), (
            f"message {event_id(record)} differs from its outbox row")
        copies[event_id(record)] += 1
    assert set(copies) == set(outbox), f"{len(set(outbox) - set(copies))} sent rows never reached Kafka"
    resent = sum(n - 1 for n in copies.values())
    assert resent >= caught_before + caught_after, (resent, caught_before, caught_after)

    # Downstream exactly once: one reader run per emitted event, whatever the copies.
    per_event = Counter(e for (e,) in rows(runtime, """
        SELECT e.source_event_id FROM runs r JOIN events e ON e.id = r.event_id
         WHERE r.workflow = 'emitted-reader'"""))
    assert set(per_event) == set(outbox) and set(per_event.values()) == {1}, (
        f"reader runs per emitted event: {Counter(per_event.values())}")
    wait_for(lambda: live_runs(runtime) == 0, 60, 0.1, "every reader run to finish")
    assert count(runtime, "SELECT count(*) FROM runs WHERE status <> 'succeeded'") == 0
    audit_waits(runtime, overdue_after=None)
    audit_outbox(runtime, unsent_within=OUTBOX_SLACK)
    assert_api_matches_database(runtime)

    figures = Figures("relay SIGKILL mid-batch (before and after) a Kafka restart", events_in=total,
                      events_recorded=count(runtime, "SELECT count(*) FROM events"), runs_finished=readers(runtime),
                      seconds=time.monotonic() - clock)
    figures.notes.append(
        f"{total} emits; {killed_before + killed_after} relays SIGKILLed inside a batch, the caught ones with "
        f"{caught_before} and {caught_after} messages acknowledged but not marked sent; {resent} copies in Kafka, "
        f"each with its row's event id; one reader run per emitted event")
    publish_figures(figures)
