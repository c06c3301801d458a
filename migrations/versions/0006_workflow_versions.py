"""workflow versions: the version each run started with, one structure per version,
why steps were skipped, and when a step's message was first handed back for want of code

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 11:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'workflow_versions',
        sa.Column('workflow', sa.String(length=200), nullable=False),
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('structure', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
                  nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('workflow', 'version', name=op.f('pk_workflow_versions')),
    )
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('version', sa.String(length=64), nullable=True))
    op.create_index('ix_runs_workflow_version', 'runs', ['workflow', 'version', 'status'], unique=False)
    with op.batch_alter_table('steps') as batch:
        batch.add_column(sa.Column('reason', sa.Text(), nullable=True))
        batch.add_column(sa.Column('handed_back_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('steps') as batch:
        batch.drop_column('handed_back_at')
        batch.drop_column('reason')
    op.drop_index('ix_runs_workflow_version', table_name='runs')
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('version')
    op.drop_table('workflow_versions')
