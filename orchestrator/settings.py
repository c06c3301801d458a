"""Settings, read from the environment once and passed around explicitly.

Precedence: an explicit argument (CLI flag, `Settings(...)` field) over the environment
variable over the default documented here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .composition import DEFAULT_MAX_MAP_ITEMS
from .errors import ConfigurationError

#: Folder, relative to the working directory, of the embedded defaults' files.
DEV_HOME = Path(".orchestrator")
#: State store when ORCHESTRATOR_DATABASE_URL is unset: a local SQLite file.
DEFAULT_DATABASE_URL = f"sqlite:///{DEV_HOME / 'orchestrator.db'}"
#: Celery broker when ORCHESTRATOR_BROKER_URL is unset: kombu's SQLAlchemy transport on SQLite.
DEFAULT_BROKER_URL = f"sqla+sqlite:///{DEV_HOME / 'broker.db'}"
#: Import paths searched for workflows.
DEFAULT_WORKFLOWS = "workflows"
#: Seconds a running step's claim lasts without a heartbeat before another worker may take it.
DEFAULT_STEP_LEASE = 60.0
#: Seconds a step may sit queued before the recovery loop assumes its message was lost.
DEFAULT_REDELIVER_AFTER = 300.0
#: Steps a worker process runs inline after the one its message named, with no broker round
#: trip: when a step succeeds, the next step of the run that its success makes ready on the
#: same queue is claimed in the same transaction and run at once (see `executor`). 0 sends
#: every step as a message.
DEFAULT_INLINE_STEPS = 8
#: Seconds between two sweeps of the recovery loop.
DEFAULT_RECOVERY_INTERVAL = 5.0
#: Seconds between two looks for due timers (sleeps, wait and approval timeouts).
DEFAULT_TIMER_INTERVAL = 0.25
#: Interface `orchestrator web` listens on when ORCHESTRATOR_WEB_HOST is unset.
DEFAULT_WEB_HOST = "127.0.0.1"
#: Port `orchestrator web` listens on when ORCHESTRATOR_WEB_PORT is unset.
DEFAULT_WEB_PORT = 8080
#: Consumer group of `orchestrator consume` when ORCHESTRATOR_KAFKA_GROUP is unset.
DEFAULT_KAFKA_GROUP = "orchestrator"
#: Largest Kafka message value, in bytes, the consumer accepts; larger ones are rejected.
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
#: Rejected events of topic T are copied to topic T + this suffix.
DEFAULT_DLQ_SUFFIX = ".dlq"
#: Seconds without a heartbeat before the group gives a consumer's partitions to another.
#: Tansu also waits half this long for members to join, so dev mode and tests use less.
DEFAULT_KAFKA_SESSION_TIMEOUT = 10.0
#: Longest a consumer may spend on one poll batch before the group considers it stuck.
DEFAULT_KAFKA_MAX_POLL_INTERVAL = 300.0
#: Most messages one poll (one database transaction) takes.
DEFAULT_KAFKA_BATCH_SIZE = 500
#: Seconds a Kafka fetch may wait at the broker for data (kafka-python's `fetch_max_wait_ms`
#: default). Apache Kafka answers a waiting fetch as soon as data arrives, so this costs it no
#: latency; Tansu 0.6 answers only when the wait is over, so with Tansu an event waits up to
#: this long before the consumer sees it (`orchestrator dev` uses `DEV_KAFKA_FETCH_MAX_WAIT`).
DEFAULT_KAFKA_FETCH_MAX_WAIT = 0.5
#: Seconds a step whose code the deployed workers lack is handed back (another worker of a
#: rolling deploy may still have it) before it fails; also how long a workflow version no
#: worker reports any more is still counted as deployed.
DEFAULT_VERSION_GRACE = 600.0
#: Seconds the outbox relay waits, when the outbox is empty, before looking again (on
#: PostgreSQL a commit with emits wakes it sooner: `emits.OUTBOX_CHANNEL`).
DEFAULT_RELAY_INTERVAL = 0.5
#: Most outbox rows one relay transaction publishes.
DEFAULT_RELAY_BATCH_SIZE = 500
#: How Kafka clients reach the brokers when ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL is unset.
DEFAULT_KAFKA_SECURITY_PROTOCOL = "PLAINTEXT"


def _upper(env: Mapping[str, str], name: str) -> str | None:
    """An enumerated value (a protocol, a mechanism) as upper case; unset or empty is None."""
    raw = (env.get(name) or "").strip()
    return raw.upper() or None


def _number(
    env: Mapping[str, str],
    name: str,
    default: Any,
    convert: Callable[[str], Any],
    what: str,
    valid: Callable[[Any], bool],
    rule: str,
) -> Any:
    """Parse variable `name` with `convert`; a malformed or out-of-range value is one clear error."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = convert(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not {what}") from None
    if not valid(value):
        raise ConfigurationError(f"{name}={raw!r} must be {rule}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, "a number of seconds", lambda v: v > 0, "greater than 0")


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in "600", "90s", "10m", "1.5h" or "2d"; ValueError if it is none of these."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z]*)\s*", text)
    if match is None or match.group(2) not in ("", *_UNITS):
        raise ValueError(text)
    return float(match.group(1)) * _UNITS.get(match.group(2), 1.0)


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, parse_duration, "a duration (seconds, or 90s, 10m, 1h)",
                   lambda v: 0 < v <= 30 * 86400, "greater than 0 and at most 30 days")


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    return _number(
        env, name, default, int, "a port number", lambda v: 0 < v < 65536, "between 1 and 65535"
    )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int, "a whole number", lambda v: v > 0, "greater than 0")


#: Words ORCHESTRATOR_* on/off switches accept (case-insensitive); unset or empty is off.
FLAG_ON = ("1", "true", "yes", "on")
FLAG_OFF = ("0", "false", "no", "off")


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    word = raw.strip().lower()
    if word not in FLAG_ON + FLAG_OFF:
        raise ConfigurationError(f"{name}={raw!r} must be 1 or 0 (or true/false, yes/no, on/off)")
    return word in FLAG_ON


def normalise_database_url(url: str) -> str:
    """Use the psycopg 3 driver for plain `postgresql://` URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def safe_url(url: str) -> str:
    """`url` with the password of its user, if any, shown as `***`."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^/@:]*:)[^/@]*@", r"\1***@", url)


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = DEFAULT_BROKER_URL
    workflows: tuple[str, ...] = (DEFAULT_WORKFLOWS,)
    step_lease: float = DEFAULT_STEP_LEASE
    redeliver_after: float = DEFAULT_REDELIVER_AFTER
    #: ORCHESTRATOR_INLINE_STEPS: see DEFAULT_INLINE_STEPS.
    inline_steps: int = DEFAULT_INLINE_STEPS
    recovery_interval: float = DEFAULT_RECOVERY_INTERVAL
    #: ORCHESTRATOR_TIMER_INTERVAL: how often the recovery process fires due timers.
    timer_interval: float = DEFAULT_TIMER_INTERVAL
    #: Bearer token every mutating API call and the dashboard login must present; None
    #: refuses them all (`orchestrator dev` generates one).
    api_token: str | None = field(default=None, repr=False)
    web_host: str = DEFAULT_WEB_HOST
    web_port: int = DEFAULT_WEB_PORT
    #: Signs the dashboard's session cookie; derived from `api_token` when unset.
    secret_key: str | None = field(default=None, repr=False)
    #: Every page and GET needs the token or a login (not /healthz, nor /metrics when
    #: `metrics_public`); off, reads are open to anyone who reaches the port.
    web_read_auth: bool = False
    #: /metrics stays open when `web_read_auth` closes the rest.
    metrics_public: bool = False
    #: The session cookie is `Secure` even on a plain-HTTP request (TLS ends at a proxy).
    web_secure_cookie: bool = False
    #: Kafka bootstrap servers ("host:port[,host:port]"); None: no Kafka configured
    #: (`orchestrator dev` then starts the embedded broker).
    kafka_bootstrap: str | None = None
    kafka_group: str = DEFAULT_KAFKA_GROUP
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    dlq_suffix: str = DEFAULT_DLQ_SUFFIX
    kafka_session_timeout: float = DEFAULT_KAFKA_SESSION_TIMEOUT
    kafka_max_poll_interval: float = DEFAULT_KAFKA_MAX_POLL_INTERVAL
    kafka_batch_size: int = DEFAULT_KAFKA_BATCH_SIZE
    #: ORCHESTRATOR_KAFKA_FETCH_MAX_WAIT, in seconds (see `DEFAULT_KAFKA_FETCH_MAX_WAIT`).
    kafka_fetch_max_wait: float = DEFAULT_KAFKA_FETCH_MAX_WAIT
    #: ORCHESTRATOR_VERSION_GRACE, in seconds (see `DEFAULT_VERSION_GRACE`).
    version_grace: float = DEFAULT_VERSION_GRACE
    #: ORCHESTRATOR_RELAY_INTERVAL, in seconds (see `DEFAULT_RELAY_INTERVAL`).
    relay_interval: float = DEFAULT_RELAY_INTERVAL
    #: ORCHESTRATOR_RELAY_BATCH_SIZE (see `DEFAULT_RELAY_BATCH_SIZE`).
    relay_batch_size: int = DEFAULT_RELAY_BATCH_SIZE
    #: ORCHESTRATOR_MAX_MAP_ITEMS: most items one `flow.map` node may expand to.
    max_map_items: int = DEFAULT_MAX_MAP_ITEMS
    #: ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    #: (checked, with the other Kafka security settings, by `kafka_security.check_settings`).
    kafka_security_protocol: str = DEFAULT_KAFKA_SECURITY_PROTOCOL
    #: ORCHESTRATOR_KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    #: ORCHESTRATOR_KAFKA_SASL_PASSWORD: never shown (repr, logs, errors, /healthz).
    kafka_sasl_password: str | None = field(default=None, repr=False)
    #: ORCHESTRATOR_KAFKA_SSL_CAFILE: PEM file of the CA(s) that signed the brokers'
    #: certificates; unset: the system's CAs.
    kafka_ssl_cafile: str | None = None
    #: ORCHESTRATOR_KAFKA_SSL_CERTFILE and _KEYFILE: this client's certificate (mutual TLS).
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    #: ORCHESTRATOR_KAFKA_SSL_CHECK_HOSTNAME: the broker's certificate must name the host
    #: (or IP address) the client connects to.
    kafka_ssl_check_hostname: bool = True
    #: Every ORCHESTRATOR_* variable as read (may hold secrets: never printed).
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        workflows = tuple(
            p.strip() for p in env.get("ORCHESTRATOR_WORKFLOWS", DEFAULT_WORKFLOWS).split(",") if p.strip()
        )
        return cls(
            database_url=normalise_database_url(
                env.get("ORCHESTRATOR_DATABASE_URL") or DEFAULT_DATABASE_URL
            ),
            broker_url=env.get("ORCHESTRATOR_BROKER_URL") or DEFAULT_BROKER_URL,
            workflows=workflows or (DEFAULT_WORKFLOWS,),
            step_lease=_float(env, "ORCHESTRATOR_STEP_LEASE", DEFAULT_STEP_LEASE),
            redeliver_after=_float(env, "ORCHESTRATOR_REDELIVER_AFTER", DEFAULT_REDELIVER_AFTER),
            inline_steps=_number(env, "ORCHESTRATOR_INLINE_STEPS", DEFAULT_INLINE_STEPS, int,
                                 "a whole number", lambda v: v >= 0, "0 or more"),
            recovery_interval=_float(
                env, "ORCHESTRATOR_RECOVERY_INTERVAL", DEFAULT_RECOVERY_INTERVAL
            ),
            timer_interval=_float(env, "ORCHESTRATOR_TIMER_INTERVAL", DEFAULT_TIMER_INTERVAL),
            api_token=env.get("ORCHESTRATOR_API_TOKEN") or None,
            web_host=env.get("ORCHESTRATOR_WEB_HOST") or DEFAULT_WEB_HOST,
            web_port=_port(env, "ORCHESTRATOR_WEB_PORT", DEFAULT_WEB_PORT),
            secret_key=env.get("ORCHESTRATOR_SECRET_KEY") or None,
            web_read_auth=_flag(env, "ORCHESTRATOR_WEB_READ_AUTH"),
            metrics_public=_flag(env, "ORCHESTRATOR_METRICS_PUBLIC"),
            web_secure_cookie=_flag(env, "ORCHESTRATOR_WEB_SECURE_COOKIE"),
            kafka_bootstrap=env.get("ORCHESTRATOR_KAFKA_BOOTSTRAP") or None,
            kafka_group=env.get("ORCHESTRATOR_KAFKA_GROUP") or DEFAULT_KAFKA_GROUP,
            max_event_bytes=_positive_int(env, "ORCHESTRATOR_MAX_EVENT_BYTES", DEFAULT_MAX_EVENT_BYTES),
            dlq_suffix=env.get("ORCHESTRATOR_DLQ_SUFFIX") or DEFAULT_DLQ_SUFFIX,
            kafka_session_timeout=_float(
                env, "ORCHESTRATOR_KAFKA_SESSION_TIMEOUT", DEFAULT_KAFKA_SESSION_TIMEOUT
            ),
            kafka_max_poll_interval=_float(
                env, "ORCHESTRATOR_KAFKA_MAX_POLL_INTERVAL", DEFAULT_KAFKA_MAX_POLL_INTERVAL
            ),
            kafka_batch_size=_positive_int(env, "ORCHESTRATOR_KAFKA_BATCH_SIZE", DEFAULT_KAFKA_BATCH_SIZE),
            kafka_fetch_max_wait=_float(
                env, "ORCHESTRATOR_KAFKA_FETCH_MAX_WAIT", DEFAULT_KAFKA_FETCH_MAX_WAIT
            ),
            version_grace=_duration(env, "ORCHESTRATOR_VERSION_GRACE", DEFAULT_VERSION_GRACE),
            relay_interval=_float(env, "ORCHESTRATOR_RELAY_INTERVAL", DEFAULT_RELAY_INTERVAL),
            relay_batch_size=_positive_int(env, "ORCHESTRATOR_RELAY_BATCH_SIZE", DEFAULT_RELAY_BATCH_SIZE),
            max_map_items=_positive_int(env, "ORCHESTRATOR_MAX_MAP_ITEMS", DEFAULT_MAX_MAP_ITEMS),
            kafka_security_protocol=_upper(env, "ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL")
            or DEFAULT_KAFKA_SECURITY_PROTOCOL,
            kafka_sasl_mechanism=_upper(env, "ORCHESTRATOR_KAFKA_SASL_MECHANISM"),
            kafka_sasl_username=env.get("ORCHESTRATOR_KAFKA_SASL_USERNAME") or None,
            kafka_sasl_password=env.get("ORCHESTRATOR_KAFKA_SASL_PASSWORD") or None,
            kafka_ssl_cafile=env.get("ORCHESTRATOR_KAFKA_SSL_CAFILE") or None,
            kafka_ssl_certfile=env.get("ORCHESTRATOR_KAFKA_SSL_CERTFILE") or None,
            kafka_ssl_keyfile=env.get("ORCHESTRATOR_KAFKA_SSL_KEYFILE") or None,
            kafka_ssl_check_hostname=_flag(env, "ORCHESTRATOR_KAFKA_SSL_CHECK_HOSTNAME", default=True),
            extra={k: v for k, v in env.items() if k.startswith("ORCHESTRATOR_")},
        )

    def __repr__(self) -> str:
        """The dataclass's repr without secrets: URL passwords hidden, tokens and keys left out."""
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        shown["database_url"] = safe_url(self.database_url)
        shown["broker_url"] = safe_url(self.broker_url)
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
