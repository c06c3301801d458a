"""Kafka settings, bootstrap parsing, the broker probe, outage logging and consumer checks."""

from __future__ import annotations

import logging
import socket
import threading

import pytest
from kafka.structs import TopicPartition
from sqlalchemy import create_engine

from orchestrator import Workflow, kafka_trigger
from orchestrator.consumer import EventConsumer, Outage, _next_offsets
from orchestrator.db.session import session_factory
from orchestrator.dispatch import RecordingDispatcher
from orchestrator.engine import WorkflowEngine
from orchestrator.errors import ConfigurationError
from orchestrator.intake import Message
from orchestrator.kafka import answers_kafka, bootstrap_servers, consumer_config
from orchestrator.registry import Registry
from orchestrator.settings import (
    DEFAULT_DLQ_SUFFIX,
    DEFAULT_KAFKA_FETCH_MAX_WAIT,
    DEFAULT_KAFKA_GROUP,
    DEFAULT_MAX_EVENT_BYTES,
    Settings,
)


def test_kafka_settings_come_from_the_environment_with_documented_defaults():
    plain = Settings.from_env({})
    assert plain.kafka_bootstrap is None
    assert (plain.kafka_group, plain.max_event_bytes, plain.dlq_suffix) == (
        DEFAULT_KAFKA_GROUP, DEFAULT_MAX_EVENT_BYTES, DEFAULT_DLQ_SUFFIX
    ) == ("orchestrator", 1024 * 1024, ".dlq")
    custom = Settings.from_env({
        "ORCHESTRATOR_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
        "ORCHESTRATOR_KAFKA_GROUP": "billing",
        "ORCHESTRATOR_MAX_EVENT_BYTES": "2048",
        "ORCHESTRATOR_DLQ_SUFFIX": "-dead",
        "ORCHESTRATOR_KAFKA_SESSION_TIMEOUT": "4.5",
        "ORCHESTRATOR_KAFKA_MAX_POLL_INTERVAL": "60",
        "ORCHESTRATOR_KAFKA_BATCH_SIZE": "100",
    })
    assert (custom.kafka_bootstrap, custom.kafka_group, custom.max_event_bytes, custom.dlq_suffix) == (
        "k1:9092,k2:9092", "billing", 2048, "-dead"
    )
    assert (custom.kafka_session_timeout, custom.kafka_max_poll_interval, custom.kafka_batch_size) == (4.5, 60.0, 100)


def test_the_fetch_wait_defaults_to_kafka_pythons_and_is_given_to_the_consumer_in_ms():
    assert Settings.from_env({}).kafka_fetch_max_wait == DEFAULT_KAFKA_FETCH_MAX_WAIT == 0.5
    plain = consumer_config(Settings(kafka_bootstrap="k:9092"))
    assert plain["fetch_max_wait_ms"] == 500
    quick = Settings.from_env({"ORCHESTRATOR_KAFKA_BOOTSTRAP": "k:9092", "ORCHESTRATOR_KAFKA_FETCH_MAX_WAIT": "0.01"})
    assert quick.kafka_fetch_max_wait == 0.01
    assert consumer_config(quick)["fetch_max_wait_ms"] == 10
    assert consumer_config(quick.with_(kafka_fetch_max_wait=0.0001))["fetch_max_wait_ms"] == 1


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ORCHESTRATOR_KAFKA_FETCH_MAX_WAIT", "0", "must be greater than 0"),
        ("ORCHESTRATOR_KAFKA_FETCH_MAX_WAIT", "fast", "is not a number of seconds"),
        ("ORCHESTRATOR_MAX_EVENT_BYTES", "1MB", "ORCHESTRATOR_MAX_EVENT_BYTES='1MB' is not a whole number"),
        ("ORCHESTRATOR_MAX_EVENT_BYTES", "0", "ORCHESTRATOR_MAX_EVENT_BYTES='0' must be greater than 0"),
        ("ORCHESTRATOR_KAFKA_BATCH_SIZE", "-5", "must be greater than 0"),
        ("ORCHESTRATOR_KAFKA_SESSION_TIMEOUT", "soon", "is not a number of seconds"),
    ],
)
def test_malformed_kafka_settings_say_what_is_wrong(name, value, message):
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env({name: value})


def test_bootstrap_servers_are_required_and_checked():
    with pytest.raises(ConfigurationError, match="ORCHESTRATOR_KAFKA_BOOTSTRAP is not set"):
        bootstrap_servers(Settings())
    assert bootstrap_servers(Settings(kafka_bootstrap=" a:1 , b:2 ")) == ["a:1", "b:2"]
    with pytest.raises(ConfigurationError, match="'kafka' is not host:port"):
        bootstrap_servers(Settings(kafka_bootstrap="kafka"))


def test_the_probe_tells_a_kafka_broker_from_a_closed_port_or_another_server():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert answers_kafka("127.0.0.1", port, timeout=0.5) is False

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def talk_http() -> None:
        conn, _ = server.accept()
        conn.recv(100)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=talk_http)
    thread.start()
    try:
        assert answers_kafka("127.0.0.1", server.getsockname()[1], timeout=1.0) is False
    finally:
        thread.join(2)
        server.close()


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(caplog):
    outage = Outage("Kafka at k:9092")
    with caplog.at_level(logging.INFO, logger="orchestrator.consumer"):
        for _ in range(50):
            outage.down("connection refused")
        pauses = [outage.pause()]
        outage.down("connection refused")
        pauses.append(outage.pause())
        outage.up()
        outage.up()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0] == "Kafka at k:9092 is unavailable (connection refused); waiting for it (logged once)"
    assert messages[1].startswith("Kafka at k:9092 is back after ")
    assert pauses == [5.0, 5.0]  # doubled from 0.2 s, capped at 5 s
    fresh = Outage("db")
    fresh.down("x")
    assert fresh.pause() == 0.2
    fresh.down("x")
    assert fresh.pause() == 0.4


def test_offsets_to_commit_are_one_past_the_last_message_of_each_partition():
    messages = [Message("a", 0, 5, b""), Message("a", 0, 7, b""), Message("a", 1, 2, b""), Message("b", 0, 0, b"")]
    assert _next_offsets(messages) == {
        TopicPartition("a", 0): 8, TopicPartition("a", 1): 3, TopicPartition("b", 0): 1
    }


def _consumer_for(*workflows: Workflow) -> EventConsumer:
    settings = Settings(kafka_bootstrap="127.0.0.1:1")
    sessions = session_factory(create_engine("sqlite://"))  # never connected: the checks come first
    engine = WorkflowEngine(sessions, Registry(workflows), RecordingDispatcher(), settings)
    return EventConsumer(engine)


def _flow(name: str, *triggers) -> Workflow:  # noqa: ANN002
    flow = Workflow(name, triggers=list(triggers))

    @flow.step
    def only(ctx):  # noqa: ANN001, ANN202
        return None

    return flow


def test_a_consumer_without_triggers_or_with_illegal_topics_refuses_to_start():
    with pytest.raises(ConfigurationError, match="no loaded workflow has a Kafka trigger"):
        _consumer_for(_flow("quiet")).run()
    with pytest.raises(ConfigurationError, match="'order events' in kafka_trigger"):
        _consumer_for(_flow("spaced", kafka_trigger("order events"))).run()
