"""waits: nodes that wait (for a Kafka event, a decision, a timer), the (topic, paths)
sets the intake probes them by, the lookback index on events, and runs with a waiting step

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 14:57:22.672056
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('wait_keys',
    sa.Column('topic', sa.String(length=255), nullable=False),
    sa.Column('paths', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('topic', 'paths', name=op.f('pk_wait_keys'))
    )
    op.create_table('waits',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('step', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('topic', sa.String(length=255), nullable=True),
    sa.Column('paths', sa.Text(), nullable=True),
    sa.Column('correlation', sa.String(length=64), nullable=True),
    sa.Column('spec', _JSON, nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('event_id', sa.BigInteger(), nullable=True),
    sa.Column('decision', sa.String(length=16), nullable=True),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('decided_by', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_waits_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_waits'))
    )
    with op.batch_alter_table('waits', schema=None) as batch_op:
        batch_op.create_index('ix_waits_event', ['event_id'], unique=False)
        batch_op.create_index('ix_waits_open_correlation', ['topic', 'paths', 'correlation'], unique=False, postgresql_where=sa.text("status = 'open'"), sqlite_where=sa.text("status = 'open'"))
        batch_op.create_index('ix_waits_open_due', ['due_at'], unique=False, postgresql_where=sa.text("status = 'open' AND due_at IS NOT NULL"), sqlite_where=sa.text("status = 'open' AND due_at IS NOT NULL"))
        batch_op.create_index('ix_waits_run', ['run_id', 'step'], unique=False)

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_topic_received', ['topic', 'received_at'], unique=False)

    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.create_index('ix_steps_waiting', ['run_id'], unique=False, postgresql_where=sa.text("status = 'waiting'"), sqlite_where=sa.text("status = 'waiting'"))



def downgrade() -> None:
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.drop_index('ix_steps_waiting', postgresql_where=sa.text("status = 'waiting'"), sqlite_where=sa.text("status = 'waiting'"))

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_topic_received')

    with op.batch_alter_table('waits', schema=None) as batch_op:
        batch_op.drop_index('ix_waits_run')
        batch_op.drop_index('ix_waits_open_due', postgresql_where=sa.text("status = 'open' AND due_at IS NOT NULL"), sqlite_where=sa.text("status = 'open' AND due_at IS NOT NULL"))
        batch_op.drop_index('ix_waits_open_correlation', postgresql_where=sa.text("status = 'open'"), sqlite_where=sa.text("status = 'open'"))
        batch_op.drop_index('ix_waits_event')

    op.drop_table('waits')
    op.drop_table('wait_keys')
