"""Kafka fixtures: a real Tansu broker per session and real `orchestrator consume` processes.

Registered from tests/conftest.py (`pytest_plugins`). Each test gets topics and a consumer
group of its own (a unique topic prefix), so tests never see each other's events. Test
modules that run consumers use these settings for everything (workers included) with::

    @pytest.fixture
    def settings(kafka_settings): return kafka_settings
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from sqlalchemy import text

from orchestrator.settings import Settings
from orchestrator.tansu import TansuBroker
from tests.conftest import ROOT, settings_env

#: Workflow modules of the Kafka tests (the core test flows plus those with triggers).
KAFKA_TEST_WORKFLOWS = ("tests.flows", "tests.kafka_flows")
#: Group session timeout of test consumers: Tansu waits half of it for members to join.
TEST_SESSION_TIMEOUT = 6.0
#: Size limit of test events, small so that an over-size event is cheap to send.
TEST_MAX_EVENT_BYTES = 16 * 1024


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """One in-memory Tansu broker on a free loopback port for the whole session."""
    broker = TansuBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    yield broker
    broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


def make_kafka_settings(pg_url: str, redis_url: str, bootstrap: str, prefix: str) -> Settings:
    return Settings(
        database_url=pg_url,
        broker_url=redis_url,
        workflows=KAFKA_TEST_WORKFLOWS,
        step_lease=3.0,
        redeliver_after=5.0,
        recovery_interval=0.5,
        kafka_bootstrap=bootstrap,
        kafka_group=f"group-{prefix}",
        kafka_session_timeout=TEST_SESSION_TIMEOUT,
        max_event_bytes=TEST_MAX_EVENT_BYTES,
    )


@pytest.fixture
def kafka_settings(pg_url: str, redis_url: str, kafka_broker: TansuBroker, topic_prefix: str) -> Settings:
    return make_kafka_settings(pg_url, redis_url, kafka_broker.bootstrap, topic_prefix)


def kafka_env(settings: Settings, prefix: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = settings_env(settings, redis_url)
    env.update(
        ORCHESTRATOR_KAFKA_BOOTSTRAP=settings.kafka_bootstrap or "",
        ORCHESTRATOR_KAFKA_GROUP=settings.kafka_group,
        ORCHESTRATOR_KAFKA_SESSION_TIMEOUT=str(settings.kafka_session_timeout),
        ORCHESTRATOR_MAX_EVENT_BYTES=str(settings.max_event_bytes),
        ORCHESTRATOR_TEST_TOPIC_PREFIX=prefix,
    )
    env.update(extra)
    return env


# -- talking to the broker ---------------------------------------------------------------


class Kafka:
    """A producer and an admin client on one broker, for tests to publish and inspect."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._producer: KafkaProducer | None = None

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        return self._producer

    def create_topic(self, name: str, partitions: int = 1) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            admin.close()

    def publish(self, topic: str, value: Any, key: str | None = None, partition: int | None = None,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        """Send `value` (bytes as is, anything else as JSON); call `flush()` to wait for acks."""
        body = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
        self.producer.send(topic, value=body, key=key.encode() if key is not None else None,
                           partition=partition, headers=headers)

    def flush(self) -> None:
        self.producer.flush(timeout=30)

    def read_all(self, topic: str, timeout: float = 15.0) -> list[Any]:
        """Every message of `topic`, read without a group from the beginning to the end."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                 enable_auto_commit=False, auto_offset_reset="earliest")
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in partitions]
            if not tps:
                return []
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            end = consumer.end_offsets(tps)
            records: list[Any] = []
            deadline = time.monotonic() + timeout
            while any(consumer.position(tp) < end[tp] for tp in tps):
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not read {topic} to its end within {timeout}s")
                for batch in consumer.poll(timeout_ms=200).values():
                    records.extend(batch)
            return records
        finally:
            consumer.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None


@pytest.fixture
def kafka(kafka_settings: Settings) -> Iterator[Kafka]:
    client = Kafka(kafka_settings.kafka_bootstrap or "")
    yield client
    client.close()


# -- consumer processes -------------------------------------------------------------------


@dataclass
class ConsumerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; returns the exit status."""
        self.kill(signal.SIGTERM)
        return self.process.wait(timeout)

    def assignment(self) -> set[str]:
        """Partitions this consumer holds now, replayed from its rebalance log lines."""
        held: set[str] = set()
        for line in self.output().splitlines():
            for verb in ("assigned", "revoked", "lost"):
                marker = f"partitions {verb}: "
                if marker in line:
                    names = {n.strip() for n in line.split(marker, 1)[1].split(",")} - {"none", ""}
                    held = held | names if verb == "assigned" else held - names
        return held

    def report(self) -> dict[str, int]:
        """The counts of the consumer's last progress line (written when it stops)."""
        lines = [line for line in self.output().splitlines() if "recorded " in line and " event(s) (" in line]
        assert lines, f"consumer {self.name} wrote no progress line:\n{self.output()[-3000:]}"
        words = lines[-1].split("recorded ", 1)[1].replace("(", " ").replace(")", " ").replace(",", " ").split()
        numbers = [int(w) for w in words if w.isdigit()]
        keys = ["events", "matched", "ignored", "rejected", "runs", "dead_letters", "redelivered"]
        return dict(zip(keys, numbers, strict=True))


@pytest.fixture
def start_consumer(
    settings: Settings, topic_prefix: str, redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., ConsumerProcess]]:
    """Start real `orchestrator consume` processes; all are stopped after the test."""
    started: list[ConsumerProcess] = []

    def start(name: str | None = None, wait_assigned: bool = True, **extra_env: str) -> ConsumerProcess:
        name = name or f"c{len(started) + 1}"
        log = tmp_path / f"consumer-{name}.log"
        env = kafka_env(settings, topic_prefix, redis_url, **extra_env)
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "consume"], env=env, cwd=ROOT,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        consumer = ConsumerProcess(name, process, log)
        started.append(consumer)
        if wait_assigned:
            deadline = time.monotonic() + 60
            while not consumer.assignment():
                if process.poll() is not None:
                    pytest.fail(f"consumer {name} exited early:\n{consumer.output()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"consumer {name} was assigned no partition:\n{consumer.output()[-3000:]}")
                time.sleep(0.1)
        return consumer

    yield start
    for consumer in started:
        consumer.kill(signal.SIGTERM)
    for consumer in started:
        try:
            consumer.process.wait(15)
        except subprocess.TimeoutExpired:
            consumer.kill(signal.SIGKILL)
            consumer.process.wait()


# -- reading the database -------------------------------------------------------------------


def count(runtime: Any, sql: str, **params: Any) -> int:
    with runtime.db.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


# -- a database connection that can be cut ---------------------------------------------------------


class TcpProxy:
    """A loopback TCP proxy to a real server; `cut()` drops every connection and refuses new
    ones until `restore()`, as a database restart or a network partition would."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.start()

    def url(self, database_url: str) -> str:
        """`database_url` with its host and port replaced by this proxy's."""
        from sqlalchemy.engine import make_url

        return make_url(database_url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)
