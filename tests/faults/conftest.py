"""Fixtures of the fault-injection suite: settings on replaceable services, processes killed.

Every test runs the full path: its own Kafka topics (on the session's Tansu broker unless
it replaces the broker), real `orchestrator consume` and `orchestrator worker` processes,
PostgreSQL state and a Celery broker on Redis. A test that restarts a service gets a private
one (tests/fixtures/private.py), so the machine's shared PostgreSQL and Redis are never
touched: override `database_url`, `broker_url` or `kafka_bootstrap` with `private_postgres`,
`private_redis` or `private_kafka`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.settings import DEFAULT_MAX_EVENT_BYTES, Settings
from orchestrator.tansu import TansuBroker
from tests.faults.harness import COLLECTED, Load, table
from tests.fixtures.config import make_kafka_settings

#: Workflow modules of the fault tests (the side channel counts executions per attempt).
FAULT_WORKFLOWS = ("tests.faults.flows",)
#: Group session timeout of fault-test consumers (Tansu waits half of it for joins).
SESSION_TIMEOUT = 6.0


# -- the services each test talks to (overridden by tests that restart one) --------------------


@pytest.fixture
def database_url(pg_url: str) -> str:
    return pg_url


@pytest.fixture
def broker_url(redis_url: str) -> str:
    return redis_url


@pytest.fixture
def kafka_bootstrap(kafka_broker: TansuBroker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def settings(database_url: str, broker_url: str, kafka_bootstrap: str, topic_prefix: str) -> Settings:
    """The suite's Kafka settings on these services, fault workflows, batches of 100."""
    return make_kafka_settings(database_url, broker_url, kafka_bootstrap, topic_prefix,
                               workflows=FAULT_WORKFLOWS, kafka_session_timeout=SESSION_TIMEOUT,
                               max_event_bytes=DEFAULT_MAX_EVENT_BYTES, kafka_batch_size=100)


@pytest.fixture
def make_load(settings: Settings, topic_prefix: str) -> Iterator[Callable[..., Load]]:
    """`make_load(name, partitions)`: a `Load` on a new topic `<prefix><name>`, closed after the test."""
    loads: list[Load] = []

    def make(name: str = "load", partitions: int = 4) -> Load:
        load = Load(settings.kafka_bootstrap or "", f"{topic_prefix}{name}")
        loads.append(load)
        load.create_topic(partitions)
        return load

    yield make
    for load in loads:
        load.close()


# -- processes (killed outright when a test ends, as everywhere: tests/fixtures/processes.py) ----


@pytest.fixture
def worker_env(topic_prefix: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Workers get the test's topic prefix, as the consumers do: a wait's topic is part of its
    workflow's version, which must be the same in both (else the worker sees a deploy skew)."""
    monkeypatch.setenv("ORCHESTRATOR_TEST_TOPIC_PREFIX", topic_prefix)
    return {}


# -- the figures table ----------------------------------------------------------------------------


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures of every fault test that ran, as a Markdown table."""
    if COLLECTED:
        terminalreporter.write_sep("=", "fault-injection figures")
        terminalreporter.write_line(table(COLLECTED))
        target = os.environ.get("ORCHESTRATOR_FAULT_FIGURES")
        if target:
            Path(target).write_text(table(COLLECTED) + "\n")
