"""The harness's databases: one SQLite file per test, copied from a template migrated once.

Migrating with Alembic takes most of a second; copying a migrated file takes well under a
millisecond. So a pytest session migrates one template (`migrated_template`) and every test
gets a copy of its own (`copy_of`): the real schema, the real migrations, nothing shared
between tests. Durability is turned off (`PRAGMA synchronous=OFF`): a test's database
lives as long as the test, and fsyncs would be most of the harness's time.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import uuid
from pathlib import Path

from sqlalchemy import Engine, event

from ..db.migrate import upgrade
from ..db.session import create_db_engine

#: File name of the template inside its directory.
TEMPLATE_NAME = "template.db"

_lock = threading.Lock()
#: Templates this process migrated, by directory (`shared_template`).
_templates: dict[Path, Path] = {}


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def migrated_template(directory: Path) -> Path:
    """Create a SQLite database in `directory`, migrated to head; return its path.

    Left as a single file (rollback journal, WAL checkpointed) so a plain copy is complete.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TEMPLATE_NAME
    path.unlink(missing_ok=True)
    upgrade(sqlite_url(path))
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()
    return path


def shared_template(directory: Path) -> Path:
    """`migrated_template(directory)`, done once per process (for use outside pytest)."""
    with _lock:
        if directory not in _templates:
            _templates[directory] = migrated_template(directory)
        return _templates[directory]


def copy_of(template: Path, directory: Path) -> str:
    """A fresh copy of `template` in `directory`; returns its database URL."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"orchestrator-{uuid.uuid4().hex[:8]}.db"
    shutil.copyfile(template, path)
    return sqlite_url(path)


def create_test_engine(url: str) -> Engine:
    """The production engine factory's SQLite engine (WAL, `BEGIN IMMEDIATE`, foreign keys)
    without fsyncs (see the module docstring)."""
    engine = create_db_engine(url)

    @event.listens_for(engine, "connect")
    def _no_fsync(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=OFF")
        cur.close()

    return engine
