"""Kafka client factories (kafka-python), built from `Settings`. Nothing connects at import.

Every client gets the same bootstrap servers and the same patient reconnect policy: a broker
that goes away is retried with exponential backoff up to `RECONNECT_BACKOFF_MAX_MS`, never
in a tight loop.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterable
from typing import Any

from .errors import ConfigurationError
from .settings import Settings

log = logging.getLogger("orchestrator.kafka")

#: First delay, in milliseconds, before reconnecting to a broker that dropped the connection.
RECONNECT_BACKOFF_MS = 100
#: Longest delay, in milliseconds, between two reconnect attempts during an outage.
RECONNECT_BACKOFF_MAX_MS = 2000
#: Milliseconds a request may wait for its answer before it is retried elsewhere.
REQUEST_TIMEOUT_MS = 15000
#: Milliseconds a new client waits for a first broker before giving up (the caller retries).
BOOTSTRAP_TIMEOUT_MS = 5000


def bootstrap_servers(settings: Settings) -> list[str]:
    """The configured bootstrap servers, or a ConfigurationError saying how to set them."""
    if not settings.kafka_bootstrap:
        raise ConfigurationError(
            "ORCHESTRATOR_KAFKA_BOOTSTRAP is not set: point it at your Kafka brokers "
            "(host:port[,host:port]), or use `orchestrator dev`, which starts a local broker"
        )
    servers = [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()]
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigurationError(
                f"ORCHESTRATOR_KAFKA_BOOTSTRAP={settings.kafka_bootstrap!r}: {server!r} is not host:port"
            )
    return servers


def answers_kafka(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a Kafka broker at host:port answers an ApiVersions (v0) request.

    A probe independent of any client's state: the consumer uses it to tell an outage
    from a quiet topic, `orchestrator dev` to know its broker is up.
    """
    client_id = b"orchestrator-probe"
    correlation = 0x0C0FFEE
    request = struct.pack(">hhih", 18, 0, correlation, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(request)) + request)
            header = _read(sock, 8)
    except OSError:
        return False
    if header is None:
        return False
    size, answered = struct.unpack(">ii", header)
    return size >= 4 and answered == correlation


def _read(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": bootstrap_servers(settings),
        "client_id": "orchestrator",
        "reconnect_backoff_ms": RECONNECT_BACKOFF_MS,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        "request_timeout_ms": REQUEST_TIMEOUT_MS,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
    }


def _known(client: type, config: dict[str, Any]) -> dict[str, Any]:
    """Drop options this kafka-python version does not know (it refuses unknown ones)."""
    known = getattr(client, "DEFAULT_CONFIG", None)
    return config if known is None else {k: v for k, v in config.items() if k in known}


def create_consumer(settings: Settings, **overrides: Any) -> Any:
    """A consumer in the orchestrator's group that commits offsets only when told to.

    Messages are handed over as raw bytes (decoding is the intake's job, so a bad message
    is rejected rather than crashing the consumer). Subscribe after creating it.
    """
    from kafka import KafkaConsumer

    session_ms = int(settings.kafka_session_timeout * 1000)
    config: dict[str, Any] = {
        **_common(settings),
        "group_id": settings.kafka_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.kafka_batch_size,
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": max(100, session_ms // 3),
        "max_poll_interval_ms": int(settings.kafka_max_poll_interval * 1000),
        "request_timeout_ms": max(REQUEST_TIMEOUT_MS, session_ms + 5000),
    }
    config.update(overrides)
    return KafkaConsumer(**_known(KafkaConsumer, config))


def create_producer(settings: Settings, **overrides: Any) -> Any:
    """A producer that waits for the leader and all in-sync replicas (`acks="all"`)."""
    from kafka import KafkaProducer

    config: dict[str, Any] = {
        **_common(settings),
        "acks": "all",
        "linger_ms": 5,
        "retries": 5,
        "max_request_size": max(settings.max_event_bytes * 2, 1024 * 1024) + 64 * 1024,
    }
    config.update(overrides)
    return KafkaProducer(**_known(KafkaProducer, config))


def create_admin(settings: Settings, **overrides: Any) -> Any:
    from kafka import KafkaAdminClient

    config: dict[str, Any] = {**_common(settings), "client_id": "orchestrator-admin"}
    config.update(overrides)
    return KafkaAdminClient(**_known(KafkaAdminClient, config))


def reachable(settings: Settings) -> bool:
    """True when some bootstrap server answers Kafka requests."""
    for server in bootstrap_servers(settings):
        host, _, port = server.rpartition(":")
        if answers_kafka(host.strip("[]"), int(port)):
            return True
    return False


def ensure_topics(admin: Any, topics: Iterable[str], partitions: int | None = None) -> list[str]:
    """Create the topics that do not exist yet; returns those created.

    `partitions=None` takes the broker's default partition count (and replication factor).
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    existing = set(admin.list_topics())
    missing = sorted(set(topics) - existing)
    if not missing:
        return []
    count = -1 if partitions is None else partitions
    created: list[str] = []
    for topic in missing:
        try:
            admin.create_topics([NewTopic(topic, count, -1)])
            created.append(topic)
        except TopicAlreadyExistsError:
            pass  # another consumer created it first
    return created


def quiet_client_logs(level: int = logging.CRITICAL) -> None:
    """Silence kafka-python's own per-attempt connection errors.

    During an outage kafka-python logs every reconnect attempt; the consumer reports the
    outage once itself. Run with `--log-level DEBUG` to see the client's messages again.
    """
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kafka").setLevel(level)
