"""Kafka client factories (kafka-python), built from `Settings`. Nothing connects at import.

Every client gets the same bootstrap servers, the same connection security (TLS and SASL:
`kafka_security`) and the same patient reconnect policy: a broker that goes away is retried
with exponential backoff up to `RECONNECT_BACKOFF_MAX_MS`, never in a tight loop.
`check_connection` tells, at start-up, a broker that is away (waited for) from one that
refuses the TLS handshake or the login (a ConfigurationError: one line naming the setting).
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from collections.abc import Iterable
from typing import Any

from . import kafka_security
from .errors import ConfigurationError
from .settings import Settings

log = logging.getLogger("orchestrator.kafka")

#: First delay, in milliseconds, before reconnecting to a broker that dropped the connection.
RECONNECT_BACKOFF_MS = 100
#: Longest delay, in milliseconds, between two reconnect attempts during an outage.
RECONNECT_BACKOFF_MAX_MS = 2000
#: Milliseconds a request may wait for its answer before it is retried elsewhere.
REQUEST_TIMEOUT_MS = 15000
#: Kafka's ApiVersions request (the probe's).
_API_VERSIONS = 18
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


def answers_kafka(host: str, port: int, timeout: float = 1.0, tls: ssl.SSLContext | None = None) -> bool:
    """True when a Kafka broker at host:port answers an ApiVersions (v0) request.

    A probe independent of any client's state: the consumer uses it to tell an outage
    from a quiet topic, `orchestrator dev` to know its broker is up. With `tls` the probe
    speaks TLS first (ApiVersions needs no SASL login, so none is attempted).
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            raw.settimeout(timeout)
            with _wrapped(raw, host, tls) as sock:
                return _api_versions(sock)
    except OSError:  # ssl.SSLError included: a broker we cannot talk to does not answer
        return False


def _wrapped(sock: socket.socket, host: str, tls: ssl.SSLContext | None) -> socket.socket:
    return sock if tls is None else tls.wrap_socket(sock, server_hostname=host)


def _api_versions(sock: socket.socket) -> bool:
    """True when the broker on `sock` answers an ApiVersions (v0) request, read to its end
    so that a SASL exchange may follow."""
    try:
        kafka_security.exchange(sock, _API_VERSIONS, 0, 0x0C0FFEE, b"")
    except (ConnectionError, struct.error):  # closed, another request's answer, or too short
        return False
    return True


def _common(settings: Settings) -> dict[str, Any]:
    """The options every client gets: servers, connection security, reconnect policy."""
    return {
        "bootstrap_servers": bootstrap_servers(settings),
        "client_id": "orchestrator",
        "reconnect_backoff_ms": RECONNECT_BACKOFF_MS,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        "request_timeout_ms": REQUEST_TIMEOUT_MS,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
        **kafka_security.client_options(settings),
    }


def _known(client: type, config: dict[str, Any]) -> dict[str, Any]:
    """Drop options this kafka-python version does not know (it refuses unknown ones)."""
    known = getattr(client, "DEFAULT_CONFIG", None)
    return config if known is None else {k: v for k, v in config.items() if k in known}


def consumer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The options `create_consumer` gives kafka-python's KafkaConsumer (before `_known`)."""
    session_ms = int(settings.kafka_session_timeout * 1000)
    config: dict[str, Any] = {
        **_common(settings),
        "group_id": settings.kafka_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.kafka_batch_size,
        # How long the broker may hold a fetch with no data; Tansu holds it that long even
        # when data arrives, so with Tansu it is an event's wait (ORCHESTRATOR_KAFKA_FETCH_MAX_WAIT).
        "fetch_max_wait_ms": max(1, round(settings.kafka_fetch_max_wait * 1000)),
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": max(100, session_ms // 3),
        "max_poll_interval_ms": int(settings.kafka_max_poll_interval * 1000),
        "request_timeout_ms": max(REQUEST_TIMEOUT_MS, session_ms + 5000),
    }
    config.update(overrides)
    return config


def create_consumer(settings: Settings, **overrides: Any) -> Any:
    """A consumer in the orchestrator's group that commits offsets only when told to.

    Messages are handed over as raw bytes (decoding is the intake's job, so a bad message
    is rejected rather than crashing the consumer). Subscribe after creating it.
    """
    from kafka import KafkaConsumer

    return KafkaConsumer(**_known(KafkaConsumer, consumer_config(settings, **overrides)))


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


def _addresses(settings: Settings) -> list[tuple[str, int]]:
    return [(host.strip("[]"), int(port)) for host, _, port in
            (server.rpartition(":") for server in bootstrap_servers(settings))]


def reachable(settings: Settings) -> bool:
    """True when some bootstrap server answers Kafka requests (over TLS if configured)."""
    tls = kafka_security.tls_context(settings)
    return any(answers_kafka(host, port, tls=tls) for host, port in _addresses(settings))


def check_connection(settings: Settings, timeout: float = 5.0) -> bool:
    """Connect to each bootstrap server as the clients will: TCP, TLS, ApiVersions, SASL login.

    True when one answered and accepted the login; False when none could be reached (an
    outage: callers wait for it, or say it). A TLS handshake that fails, or a login the
    broker refuses, raises a ConfigurationError naming the setting to fix (kafka-python
    would only say "Unable to bootstrap", again and again). The password is never shown.
    """
    kafka_security.check_settings(settings)
    tls = kafka_security.tls_context(settings)
    for host, port in _addresses(settings):
        where = f"{host}:{port}"
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except OSError:
            continue
        with raw:
            raw.settimeout(timeout)
            try:
                sock = _wrapped(raw, host, tls)
            except (ssl.SSLError, OSError) as exc:
                raise kafka_security.handshake_failure(settings, where, exc) from None
            with sock:
                try:
                    if not _api_versions(sock):
                        continue
                    if kafka_security.uses_sasl(settings):
                        kafka_security.authenticate(sock, settings, where)
                    else:
                        kafka_security.check_no_login_needed(sock, settings, where)
                except (OSError, struct.error):
                    continue  # a broker going away mid-probe: an outage, not a setting
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
