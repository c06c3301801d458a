"""The Kafka broker crashes under load and comes back: the consumer waits for it, then goes on
where it was, recording every event once.

The broker is a private Tansu (`private_kafka`), which keeps everything in memory: after a
restart its topics, logs and committed offsets are gone, where a real Kafka keeps them. So
the test puts the log back as it was (every acknowledged event at its old partition and
offset, which it checks) before it publishes new events; the consumer, whose committed
offsets are gone too, reads the log again from the start and must recognise every event it
had recorded as already recorded.
"""

from __future__ import annotations

import signal
import time

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from tests.faults.harness import (
    Figures,
    Load,
    audit,
    now,
    publish_figures,
    recorded_ids,
    scalar,
    wait_until_settled,
)
from tests.fixtures.waiting import wait_for

PARTITIONS = 4
#: Seconds the broker stays down.
OUTAGE = 5.0


@pytest.fixture
def kafka_bootstrap(private_kafka) -> str:
    return private_kafka.bootstrap


def restore_log(bootstrap: str, topic: str, load: Load) -> int:
    """Create `topic` again and write every acknowledged event back at its partition and offset."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        try:
            admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        except TopicAlreadyExistsError:
            pass
        described = admin.describe_topics([topic])[0]
        assert len(described["partitions"]) == PARTITIONS, f"{topic} came back as {described}"
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_in_flight_requests_per_connection=1)
    try:
        placed = sorted(load.placed.values())
        futures = [(partition, offset, producer.send(topic, value=value, key=key, partition=partition))
                   for partition, offset, key, value in placed]
        producer.flush(30)
        for partition, offset, future in futures:
            again = future.get(30)
            assert (again.partition, again.offset) == (partition, offset), (
                f"restored {partition}/{offset} at {again.partition}/{again.offset}"
            )
    finally:
        producer.close(5)
    return len(placed)


@pytest.mark.timeout(240)
def test_kafka_broker_restarted_under_load_the_consumer_goes_on_and_records_each_event_once(
    runtime, settings, private_kafka, make_load, start_worker, start_consumer, side_channel
):
    clock = time.monotonic()
    load = make_load("load", PARTITIONS)
    topic = load.topic
    workers = [start_worker(concurrency=3) for _ in range(2)]
    consumer = start_consumer(ORCHESTRATOR_KAFKA_BATCH_SIZE="50")
    began = now()
    before, after = 400, 200
    # Published faster than the consumer reads (its triggers take 5 ms an event), so the
    # broker dies with a backlog in it.
    load.start(before, rate=300, make=lambda n: (load.event(n, assess_ms=5), None))
    wait_for(lambda: recorded_ids(runtime) >= 120, 60, 0.05, "120 events to be recorded")
    load.join()
    assert len(load.placed) == before
    killed_at = now()
    private_kafka.kill()
    recorded_at_kill = recorded_ids(runtime)
    assert recorded_at_kill < before, "the consumer had no backlog when the broker died"
    time.sleep(OUTAGE)
    assert consumer.process.poll() is None, consumer.output()[-3000:]

    private_kafka.start()  # the same port, and nothing in it
    restored = restore_log(settings.kafka_bootstrap, topic, load)
    back_at = now()
    load.start(after, rate=100, first=before).join()

    settled = wait_until_settled(runtime, before + after, timeout=120, processes=workers)
    assert consumer.stop() == 0, consumer.output()[-3000:]
    report = consumer.report()
    figures = audit(
        runtime, side_channel, Figures("Kafka broker crash (SIGKILL) and restart"), load.published,
        workflows_per_event=lambda _id: {"chain"}, fault_at=killed_at, started_at=began,
        group=settings.kafka_group, bootstrap=settings.kafka_bootstrap,
    )
    assert report["events"] == before + after, report
    output = consumer.output()
    assert output.count("is unavailable") >= 1 and "is back after" in output, output[-3000:]
    first_event = scalar(runtime, "SELECT min(received_at) FROM events WHERE received_at > :t", t=back_at)
    figures.recover_s = (first_event - back_at).total_seconds()
    figures.seconds = time.monotonic() - clock
    figures.notes.append(
        f"{recorded_at_kill} of {before} events recorded when the broker died; log of {restored} restored "
        f"after {(back_at - killed_at).total_seconds():.1f}s, {report['redelivered']} read again and skipped, "
        f"{after} new; time to recover = from the restart until events are recorded again; "
        f"settled {settled:.0f}s after the load"
    )
    publish_figures(figures)
    consumer.kill(signal.SIGKILL)
