"""What the benchmarks share: a fresh, migrated PostgreSQL database of their own, and the
environment of the worker processes they start."""

from __future__ import annotations

import os
from pathlib import Path

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
