"""The Alembic migrations are the schema: they must agree with the models."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from orchestrator.db.models import Base
from tests.fixtures.config import PG_ADMIN_URL, ROOT
from tests.fixtures.waiting import wait_for


def test_migrations_and_models_agree(pg_url):
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ; run alembic revision --autogenerate: {diff}"


def test_runs_have_indexes_for_dashboard_queries(pg_url):
    engine = create_engine(pg_url)
    indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("runs")}
    engine.dispose()
    assert indexes["ix_runs_workflow_status_created"] == ["workflow", "status", "created_at", "id"]
    assert indexes["ix_runs_created"] == ["created_at", "id"]


def test_migrations_also_build_the_sqlite_dev_schema(tmp_path):
    from orchestrator.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'dev.db'}"
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


#: Imports everything `orchestrator db upgrade` needs, waits for a start file, then runs the
#: command's real entry point: two such processes migrate at the same instant, as two pods do.
SIMULTANEOUS_UPGRADE = """
import sys, time
from pathlib import Path
import alembic.command, migrations, psycopg, sqlalchemy  # noqa: F401 - imported before the start
import orchestrator.db.migrate, orchestrator.db.models  # noqa: F401
from orchestrator.cli import main
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.002)
main(["db", "upgrade"])
"""


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A fresh PostgreSQL database with no schema at all."""
    name = f"orch_empty_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_two_db_upgrades_at_once_migrate_once_and_both_succeed(empty_database, tmp_path):
    env = {**os.environ, "ORCHESTRATOR_DATABASE_URL": empty_database,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    upgrades = [
        subprocess.Popen([sys.executable, "-c", SIMULTANEOUS_UPGRADE, str(r), str(go)], env=env,
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in ready
    ]
    wait_for(lambda: all(r.exists() for r in ready), 60, 0.01, "both upgrades to be ready")
    go.touch()
    outputs = [(p.wait(60), *p.communicate()) for p in upgrades]
    for code, _out, err in outputs:
        assert code == 0, err
        assert "Traceback" not in err and "duplicate key" not in err, err
    lines = sorted(out.strip() for _code, out, _err in outputs)
    assert "upgraded from an empty schema" in lines[1], lines
    assert "already at head" in lines[0], lines
    assert all("is at revision head" in line for line in lines), lines
