"""Layered fixtures: real PostgreSQL, real Redis, real Celery worker processes.

Each pytest session gets its own PostgreSQL database (migrated with Alembic) and claims a
Redis database number of its own, so concurrent sessions on one machine do not collide.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from orchestrator.runtime import Runtime, install
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get(
    "ORCHESTRATOR_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE = os.environ.get("ORCHESTRATOR_TEST_REDIS_BASE", "redis://127.0.0.1:6379")
TEST_WORKFLOWS = "tests.flows"
# The Kafka broker and consumer fixtures; the harness (`orchestrator_test`), which the
# package's pytest11 entry point also loads once installed, named here so the suite does
# not depend on how the package was installed.
pytest_plugins = ["tests.kafka_fixtures", "orchestrator.testing", "pytester"]


# -- services ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, migrated to head."""
    from orchestrator.db.migrate import upgrade

    name = f"orch_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """Claim a Redis database number (1-15) for this session."""
    claims = redis.Redis.from_url(f"{REDIS_BASE}/0")
    for number in range(1, 16):
        if claims.set(f"orchestrator-test-claim:{number}", os.getpid(), nx=True, ex=3600):
            redis.Redis.from_url(f"{REDIS_BASE}/{number}").flushdb()
            yield number
            claims.delete(f"orchestrator-test-claim:{number}")
            return
    pytest.fail("every Redis test database is claimed; delete orchestrator-test-claim:* keys in db 0")


@pytest.fixture(scope="session")
def redis_url(redis_db: int) -> str:
    return f"{REDIS_BASE}/{redis_db}"


@pytest.fixture
def side_channel(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


# -- settings and runtime ----------------------------------------------------------------


@pytest.fixture
def settings(pg_url: str, redis_url: str) -> Settings:
    """Short leases and a fast recovery loop, so fault tests finish in seconds."""
    return Settings(
        database_url=pg_url,
        broker_url=redis_url,
        workflows=(TEST_WORKFLOWS,),
        step_lease=3.0,
        redeliver_after=5.0,
        recovery_interval=0.5,
    )


def settings_env(settings: Settings, redis_url: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ORCHESTRATOR_DATABASE_URL=settings.database_url,
        ORCHESTRATOR_BROKER_URL=settings.broker_url,
        ORCHESTRATOR_WORKFLOWS=",".join(settings.workflows),
        ORCHESTRATOR_STEP_LEASE=str(settings.step_lease),
        ORCHESTRATOR_REDELIVER_AFTER=str(settings.redeliver_after),
        ORCHESTRATOR_RECOVERY_INTERVAL=str(settings.recovery_interval),
        ORCHESTRATOR_VERSION_GRACE=str(settings.version_grace),
        ORCHESTRATOR_INLINE_STEPS=str(settings.inline_steps),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    if redis_url:
        env["ORCHESTRATOR_TEST_REDIS"] = redis_url
    return env


@pytest.fixture
def clean_state(pg_url: str, redis_url: str) -> None:
    """Empty tables and broker before a test."""
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE attempts, steps, waits, wait_keys, runs, events, outbox, web_sessions, login_failures, workflow_versions, schedules RESTART IDENTITY CASCADE"))
    engine.dispose()
    redis.Redis.from_url(redis_url).flushdb()


@pytest.fixture
def runtime(settings: Settings, clean_state: None, redis_url: str) -> Iterator[Runtime]:
    os.environ["ORCHESTRATOR_TEST_REDIS"] = redis_url
    rt = Runtime(settings)
    install(rt)
    yield rt
    rt.close()


# -- worker processes ----------------------------------------------------------------------


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole worker: main process and its prefork children."""
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_worker(
    runtime: Runtime, settings: Settings, redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real `orchestrator worker` processes; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(concurrency: int = 2, queues: str | None = None, name: str | None = None,
              workflows: tuple[str, ...] | None = None,
              version_grace: float | None = None, inline_steps: int | None = None) -> WorkerProcess:
        """`workflows`: the modules this worker loads, if not the test's (deploy skew);
        `version_grace`: its ORCHESTRATOR_VERSION_GRACE, if not the test's; `inline_steps`:
        its ORCHESTRATOR_INLINE_STEPS, if not the default."""
        name = name or f"w{len(started) + 1}-{uuid.uuid4().hex[:6]}@test"
        log = tmp_path / f"{name.split('@')[0]}.log"
        argv = [sys.executable, "-m", "orchestrator", "worker", f"--concurrency={concurrency}",
                f"--hostname={name}"]
        if queues:
            argv.append(f"--queues={queues}")
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, env=settings_env(settings.with_(workflows=workflows or settings.workflows,
                                                      version_grace=version_grace or settings.version_grace,
                                                      inline_steps=settings.inline_steps
                                                      if inline_steps is None else inline_steps),
                                       redis_url),
                cwd=ROOT, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        worker = WorkerProcess(name, process, log)
        started.append(worker)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"worker {name} exited early:\n{worker.output()[-3000:]}")
            if " ready." in worker.output():
                return worker
            time.sleep(0.2)
        pytest.fail(f"worker {name} did not become ready:\n{worker.output()[-3000:]}")

    yield start
    for worker in started:
        worker.kill(signal.SIGTERM)
    for worker in started:
        try:
            worker.process.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill(signal.SIGKILL)
            worker.process.wait()


def wait_for(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.1,
             message: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


@pytest.fixture
def wait_for_run(runtime: Runtime) -> Callable[..., dict]:
    """Wait until a run reaches one of `statuses`; return its JSON form."""
    from orchestrator.db.queries import get_run, run_dict

    def wait(run_id: str, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
             timeout: float = 30) -> dict:
        last: dict = {}

        def reached() -> bool:
            nonlocal last
            with runtime.sessions() as session:
                last = run_dict(get_run(session, run_id))
            return last["status"] in statuses

        try:
            wait_for(reached, timeout, 0.1, f"run {run_id} to reach {statuses}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {last}") from None
        return last

    return wait
