"""Read-only Kafka look-ups for /healthz and /metrics: reachability and consumer lag.

Each call opens a short-lived admin client with tight timeouts and closes it, so a Kafka
outage makes a probe answer "down" within seconds instead of hanging the request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator.kafka import create_admin
from orchestrator.settings import Settings

#: Milliseconds a probe waits for Kafka before calling it unreachable.
PROBE_TIMEOUT_MS = 3000


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    end: int
    committed: int | None  # None: the group never committed on this partition

    @property
    def lag(self) -> int:
        return max(self.end - (self.committed or 0), 0)


def _admin(settings: Settings) -> Any:
    """The project's admin client (`orchestrator.kafka`), with a probe's short timeouts."""
    return create_admin(
        settings,
        client_id="orchestrator-web",
        request_timeout_ms=PROBE_TIMEOUT_MS,
        bootstrap_timeout_ms=PROBE_TIMEOUT_MS,
    )


def ping(settings: Settings) -> int:
    """Number of brokers in the cluster; raises if Kafka cannot be reached."""
    admin = _admin(settings)
    try:
        return len(admin.describe_cluster()["brokers"])
    finally:
        admin.close()


def consumer_lag(settings: Settings, topics: Iterable[str] = ()) -> list[PartitionLag]:
    """Lag of the consumer group `settings.kafka_group`: end offset minus committed offset.

    Covers every partition the group has committed on plus every partition of `topics`
    (the triggers' topics), so a group that never committed still shows its backlog.
    """
    from kafka import TopicPartition
    from kafka.admin import OffsetSpec

    group = settings.kafka_group
    admin = _admin(settings)
    try:
        committed = admin.list_group_offsets({group: None}).get(group, {})
        partitions = set(committed)
        wanted = sorted(set(topics))
        if wanted:
            for topic in admin.describe_topics(wanted):
                if topic.get("error_code", 0) == 0:
                    for p in topic["partitions"]:
                        partitions.add(TopicPartition(topic["name"], p["partition_index"]))
        if not partitions:
            return []
        ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions})
    finally:
        admin.close()
    lags = []
    for tp in sorted(partitions):
        done = committed.get(tp)
        lags.append(
            PartitionLag(
                tp.topic,
                tp.partition,
                ends[tp].offset,
                done.offset if done is not None and done.offset >= 0 else None,
            )
        )
    return lags
