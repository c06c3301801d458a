"""What the benchmarks share: a fresh, migrated PostgreSQL database of their own, and the
environment of the worker processes they start."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import redis
from sqlalchemy import create_engine, text

from orchestrator.db.migrate import upgrade
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def fresh_database(name: str, admin_url: str = PG_ADMIN) -> str:
    """Drop and recreate database `name`, migrate it to head, and return its URL."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    return url


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """This process's environment plus what an `orchestrator worker` of `settings` reads."""
    return {
        **os.environ,
        "ORCHESTRATOR_DATABASE_URL": settings.database_url,
        "ORCHESTRATOR_BROKER_URL": settings.broker_url,
        "ORCHESTRATOR_WORKFLOWS": ",".join(settings.workflows),
        "PYTHONPATH": str(ROOT),
        **extra,
    }


REDIS_BASE = "redis://127.0.0.1:6379"


@contextlib.contextmanager
def claimed_redis(base: str = REDIS_BASE) -> Iterator[str]:
    """A Redis database (1-15) of this benchmark's own, claimed as the test suite claims
    its own (`orchestrator-test-claim:N` in db 0, see tests/fixtures/services.py), so a benchmark and
    test sessions running at the same time never share (and flush) one; yields its URL.
    BENCH_BROKER_URL, when set, is used as it is instead."""
    if os.environ.get("BENCH_BROKER_URL"):
        yield os.environ["BENCH_BROKER_URL"]
        return
    claims = redis.Redis.from_url(f"{base}/0")
    for number in range(15, 0, -1):  # from the top: the tests claim from 1 up
        if claims.set(f"orchestrator-test-claim:{number}", os.getpid(), nx=True, ex=3600):
            url = f"{base}/{number}"
            redis.Redis.from_url(url).flushdb()
            try:
                yield url
            finally:
                redis.Redis.from_url(url).flushdb()
                claims.delete(f"orchestrator-test-claim:{number}")
            return
    raise SystemExit("every Redis database 1-15 is claimed; delete orchestrator-test-claim:* keys in db 0")
