"""The consumer service with its two Kafka clients replaced by in-memory ones.

`LocalConsumer.handle` is `EventConsumer.handle`, the consumer loop's whole batch path:
recognise redeliveries, decode, match, map and validate (`intake`), record the events and
start their runs in one transaction (`events.record_batch`), copy rejected events to their
dead-letter topics, commit the offsets. Only the edges are local: the "Kafka consumer"
remembers seeks and commits, the "producer" keeps the dead-letter copies it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kafka.structs import OffsetAndMetadata, TopicPartition

from ..consumer import EventConsumer
from ..engine import WorkflowEngine


@dataclass(frozen=True)
class SentMessage:
    """A message the consumer produced: a dead-letter copy of a rejected event."""

    topic: str
    value: bytes | None
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        """The value of header `name`, as text (None if absent)."""
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "backslashreplace")
        return None


class _Delivered:
    """A producer future that has already succeeded."""

    def get(self, timeout: float | None = None) -> None:
        return None


class LocalProducer:
    """Keeps what is sent (the subset of `KafkaProducer` the consumer uses)."""

    def __init__(self) -> None:
        self.sent: list[SentMessage] = []

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> _Delivered:
        self.sent.append(SentMessage(topic, value, key, tuple(headers or ())))
        return _Delivered()

    def flush(self, timeout: float | None = None) -> None:
        return None


class LocalKafkaConsumer:
    """Owns every partition published to; remembers committed offsets and rewinds
    (the subset of `KafkaConsumer` that `EventConsumer.handle` uses)."""

    def __init__(self) -> None:
        self.partitions: set[TopicPartition] = set()
        self.committed: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.partitions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata], timeout_ms: int | None = None) -> None:
        for tp, meta in offsets.items():
            self.committed[tp] = meta.offset


class LocalConsumer(EventConsumer):
    """`EventConsumer` on in-memory Kafka clients (see the module docstring).

    It never pauses: the real loop waits before retrying a batch the database refused,
    here `handle` returns None at once and the harness reports it.
    """

    def __init__(self, engine: WorkflowEngine) -> None:
        super().__init__(engine)
        self.kafka_consumer = LocalKafkaConsumer()
        self.producer = LocalProducer()
        self._consumer: Any = self.kafka_consumer
        self._producer: Any = self.producer
        self.stopping.set()  # every retry pause (`stopping.wait`) returns at once
