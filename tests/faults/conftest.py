"""Fixtures of the fault-injection suite: settings on replaceable services, private servers.

Every test runs the full path: its own Kafka topics (on the session's Tansu broker unless
it replaces the broker), real `orchestrator consume` and `orchestrator worker` processes,
PostgreSQL state and a Celery broker on Redis. A test that restarts a service gets a private
one, started here on a free loopback port, so the machine's shared PostgreSQL and Redis are
never touched: override `database_url`, `broker_url` or `kafka_bootstrap` with
`private_postgres`, `private_redis` or `private_kafka`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.settings import Settings
from orchestrator.tansu import TansuBroker, free_port
from tests.faults.harness import COLLECTED, Load, table

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
    """Short leases and a fast recovery loop, so faults are settled within seconds."""
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        workflows=FAULT_WORKFLOWS,
        step_lease=3.0,
        redeliver_after=5.0,
        recovery_interval=0.5,
        kafka_bootstrap=kafka_bootstrap,
        kafka_group=f"group-{topic_prefix}",
        kafka_session_timeout=SESSION_TIMEOUT,
        kafka_batch_size=100,
    )


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


# -- processes: killed outright when a test ends (graceful shutdown is not what these test) ----


@pytest.fixture
def start_worker(start_worker: Callable[..., Any], topic_prefix: str,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """The root fixture's worker processes, SIGKILLed (whole process group) after the test.

    They get the test's topic prefix, as the consumers do: a wait's topic is part of its
    workflow's version, which must be the same in both (else the worker sees a deploy skew).
    """
    monkeypatch.setenv("ORCHESTRATOR_TEST_TOPIC_PREFIX", topic_prefix)
    started: list[Any] = []

    def start(*args: Any, **kwargs: Any) -> Any:
        worker = start_worker(*args, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill(signal.SIGKILL)


@pytest.fixture
def start_consumer(start_consumer: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """The Kafka fixtures' consumer processes, SIGKILLed after the test."""
    started: list[Any] = []

    def start(*args: Any, **kwargs: Any) -> Any:
        consumer = start_consumer(*args, **kwargs)
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        consumer.kill(signal.SIGCONT)
        consumer.kill(signal.SIGKILL)


# -- private servers ------------------------------------------------------------------------------


def _postgres_bin(name: str) -> str:
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"PostgreSQL's {name} is not installed")
    return found


class PrivatePostgres:
    """A PostgreSQL server of this test alone, in a temporary directory, run as `postgres`."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="orch-faults-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")

    def _as_postgres(self, *argv: str, timeout: float = 120) -> None:
        command = ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{argv[0]} failed: {done.stdout}\n{done.stderr}"

    def init(self) -> PrivatePostgres:
        self._as_postgres(_postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres",
                          "--auth=trust", "--no-sync", "-E", "UTF8")
        return self

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB")
        self._as_postgres(_postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                          "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except AssertionError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    from orchestrator.db.migrate import upgrade

    server = PrivatePostgres().init()
    server.start()
    upgrade(server.url)
    yield server
    server.remove()


class PrivateRedis:
    """A Redis server of this test alone, without persistence: a restart loses every message."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--protected-mode", "no"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=0.5).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis.log")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[TansuBroker]:
    broker = TansuBroker(log_path=tmp_path / "tansu.log").start()
    yield broker
    broker.stop()


# -- the figures table ----------------------------------------------------------------------------


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures of every fault test that ran, as a Markdown table."""
    if COLLECTED:
        terminalreporter.write_sep("=", "fault-injection figures")
        terminalreporter.write_line(table(COLLECTED))
        target = os.environ.get("ORCHESTRATOR_FAULT_FIGURES")
        if target:
            Path(target).write_text(table(COLLECTED) + "\n")
