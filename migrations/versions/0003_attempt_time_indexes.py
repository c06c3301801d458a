"""attempt time indexes for the metrics' scrape windows

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 11:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_attempts_started', 'attempts', ['started_at'], unique=False)
    op.create_index('ix_attempts_finished', 'attempts', ['finished_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_attempts_finished', table_name='attempts')
    op.drop_index('ix_attempts_started', table_name='attempts')
