"""admission indexes: the oldest pending runs of a key, the oldest parked steps of a key

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 17:00:00.000000

Both are partial indexes over rows that are waiting, so they stay small however many runs
have finished, and admission reads the oldest few of a backlog by an index range scan.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending' AND concurrency_key IS NOT NULL")
PARKED = sa.text("status = 'queued' AND task_id IS NULL AND concurrency_key IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        'ix_runs_pending', 'runs', ['workflow', 'concurrency_key', 'created_at', 'event_id', 'id'],
        unique=False, postgresql_where=PENDING, sqlite_where=PENDING,
    )
    op.create_index(
        'ix_steps_parked', 'steps', ['name', 'concurrency_key', 'queued_at', 'id'],
        unique=False, postgresql_where=PARKED, sqlite_where=PARKED,
    )


def downgrade() -> None:
    op.drop_index('ix_steps_parked', table_name='steps', postgresql_where=PARKED, sqlite_where=PARKED)
    op.drop_index('ix_runs_pending', table_name='runs', postgresql_where=PENDING, sqlite_where=PENDING)
