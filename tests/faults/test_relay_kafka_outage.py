"""Kafka goes away while steps emit: the steps still succeed, the outbox grows, the consumer
(whose thread the relay is) keeps running, and the outbox drains once Kafka is back.

The broker is a private, in-memory Tansu: after its restart the test creates the emitted
topic again (a real Kafka keeps it); the relay's messages sent before the outage are gone
with it, which the test does not need.
"""

from __future__ import annotations

import json

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from sqlalchemy import text

from tests.conftest import wait_for
from tests.kafka_fixtures import Kafka, count


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
