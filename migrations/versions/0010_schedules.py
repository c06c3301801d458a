"""schedules: what the scheduler knows of each cron schedule of a workflow (paused, the
newest tick handled, the next fire time, the last run and error)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 18:12:14.457228
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('schedules',
    sa.Column('workflow', sa.String(length=200), nullable=False),
    sa.Column('schedule_id', sa.String(length=64), nullable=False),
    sa.Column('cron', sa.String(length=200), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('active_since', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_tick', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_fire_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_run_id', sa.Uuid(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('workflow', 'schedule_id', name=op.f('pk_schedules'))
    )


def downgrade() -> None:
    op.drop_table('schedules')
