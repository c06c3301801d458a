"""Read-only Kafka look-ups for /healthz and /metrics: reachability and consumer lag.

Each call opens a short-lived admin client with tight timeouts and closes it, so a Kafka
outage makes a probe answer "down" within seconds instead of hanging the request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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


def _admin(bootstrap: str) -> Any:
    from kafka import KafkaAdminClient  # imported on use: only probes with Kafka set need it

    return KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","),
        client_id="orchestrator-web",
        request_timeout_ms=PROBE_TIMEOUT_MS,
        bootstrap_timeout_ms=PROBE_TIMEOUT_MS,
    )


def ping(bootstrap: str) -> int:
    """Number of brokers in the cluster; raises if Kafka cannot be reached."""
    admin = _admin(bootstrap)
    try:
        return len(admin.describe_cluster()["brokers"])
    finally:
        admin.close()


def consumer_lag(bootstrap: str, group: str, topics: Iterable[str] = ()) -> list[PartitionLag]:
    """Lag of consumer `group`: end offset minus committed offset, per partition.

    Covers every partition the group has committed on plus every partition of `topics`
    (the triggers' topics), so a group that never committed still shows its backlog.
    """
    from kafka import TopicPartition
    from kafka.admin import OffsetSpec

    admin = _admin(bootstrap)
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
