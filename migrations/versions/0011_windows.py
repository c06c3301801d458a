"""windows: debounce and batch windows of Kafka triggers, and the events each absorbed
(one row per event and workflow)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 14:33:13.948613
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('windows',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('workflow', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closes_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('run_id', sa.Uuid(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_windows_run_id_runs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_windows'))
    )
    with op.batch_alter_table('windows', schema=None) as batch_op:
        batch_op.create_index('ix_windows_due', ['closes_at'], unique=False, postgresql_where=sa.text('closed_at IS NULL'), sqlite_where=sa.text('closed_at IS NULL'))
        batch_op.create_index('ix_windows_run', ['run_id'], unique=False)
        batch_op.create_index('uq_windows_open', ['workflow', 'key'], unique=True, postgresql_where=sa.text('closed_at IS NULL'), sqlite_where=sa.text('closed_at IS NULL'))

    op.create_table('window_events',
    sa.Column('event_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('workflow', sa.String(length=200), nullable=False),
    sa.Column('window_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('input', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('dedupe_key', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['event_id'], ['events.id'], name=op.f('fk_window_events_event_id_events'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['window_id'], ['windows.id'], name=op.f('fk_window_events_window_id_windows'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('event_id', 'workflow', name=op.f('pk_window_events'))
    )
    with op.batch_alter_table('window_events', schema=None) as batch_op:
        batch_op.create_index('ix_window_events_window', ['window_id', 'event_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('window_events', schema=None) as batch_op:
        batch_op.drop_index('ix_window_events_window')

    op.drop_table('window_events')
    with op.batch_alter_table('windows', schema=None) as batch_op:
        batch_op.drop_index('uq_windows_open', postgresql_where=sa.text('closed_at IS NULL'), sqlite_where=sa.text('closed_at IS NULL'))
        batch_op.drop_index('ix_windows_run')
        batch_op.drop_index('ix_windows_due', postgresql_where=sa.text('closed_at IS NULL'), sqlite_where=sa.text('closed_at IS NULL'))

    op.drop_table('windows')
