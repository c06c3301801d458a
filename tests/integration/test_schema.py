"""The Alembic migrations are the schema: they must agree with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from orchestrator.db.models import Base


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
