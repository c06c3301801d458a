"""Schema management through Alembic (the only way the schema is created).

Several `orchestrator db upgrade` may start at once (a migrate Job retried, two pods, a
deploy tool running it per replica). On PostgreSQL they are serialised by an advisory lock:
the first migrates, the others wait for it and then find the schema already at head. SQLite
(dev mode, one machine) needs nothing more: its writers are serialised by the file lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, pool, text
from sqlalchemy.exc import OperationalError

from ..errors import ConfigurationError
from .session import create_db_engine

log = logging.getLogger("orchestrator.migrate")

#: Key of the PostgreSQL advisory lock held while migrating (ASCII "orchmigr": a number no
#: other application sharing the database is likely to use for its own advisory locks).
MIGRATION_LOCK_KEY = 0x6F7263686D696772


@dataclass(frozen=True)
class UpgradeResult:
    """The schema's Alembic revisions before and after an upgrade (empty: no schema)."""

    before: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.before != self.after


def migrations_dir() -> Path:
    import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> UpgradeResult:
    """Bring the schema at `database_url` up to `revision`, one migrator at a time."""
    try:
        with migration_lock(database_url):
            before = schema_revisions(database_url)
            command.upgrade(alembic_config(database_url), revision)
            return UpgradeResult(before, schema_revisions(database_url))
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise ConfigurationError(f"cannot reach the database: {reason}") from None


def schema_revisions(database_url: str) -> tuple[str, ...]:
    """The Alembic revisions the schema at `database_url` is at (empty: no schema yet)."""
    engine = create_db_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return tuple(sorted(MigrationContext.configure(conn).get_current_heads()))
    finally:
        engine.dispose()


@contextmanager
def migration_lock(database_url: str) -> Iterator[Connection | None]:
    """Hold the migration advisory lock (PostgreSQL; a no-op elsewhere) for the block.

    The lock belongs to a connection of its own, outside Alembic's transactions, so it is
    held across every migration and released when that connection closes, even if this
    process is killed.
    """
    if not database_url.startswith(("postgresql", "postgres")):
        yield None
        return
    engine = create_db_engine(database_url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            key = {"key": MIGRATION_LOCK_KEY}
            if not conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), key):
                log.info("another `orchestrator db upgrade` is migrating this database; waiting for it")
                conn.execute(text("SELECT pg_advisory_lock(:key)"), key)
            yield conn  # closing the connection releases the lock
    finally:
        engine.dispose()
