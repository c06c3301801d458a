"""What the benchmarks share: a fresh, migrated PostgreSQL database of their own."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from orchestrator.db.migrate import upgrade

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
