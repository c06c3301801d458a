"""outbox: events steps emit (`ctx.emit`), written with the step's success and published
by the relay; events remember the `orchestrator-event-id` of a relayed message, unique, so
a relay's re-send is recorded once

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 12:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'outbox',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('run_id', sa.Uuid(), nullable=False),
        sa.Column('step', sa.String(length=200), nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('topic', sa.String(length=255), nullable=False),
        sa.Column('key', sa.Text(), nullable=True),
        sa.Column('value', _JSON, nullable=False),
        sa.Column('headers', _JSON, nullable=False),
        sa.Column('event_id', sa.Uuid(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
        sa.UniqueConstraint('event_id', name=op.f('uq_outbox_event_id')),
    )
    op.create_index('ix_outbox_unsent', 'outbox', ['id'], unique=False,
                    postgresql_where=sa.text('sent_at IS NULL'), sqlite_where=sa.text('sent_at IS NULL'))
    op.create_index('ix_outbox_sent', 'outbox', ['sent_at'], unique=False)
    op.create_index('ix_outbox_run', 'outbox', ['run_id', 'id'], unique=False)
    with op.batch_alter_table('events') as batch:
        batch.add_column(sa.Column('source_event_id', sa.String(length=64), nullable=True))
        batch.create_unique_constraint(op.f('uq_events_source_event_id'), ['source_event_id'])


def downgrade() -> None:
    with op.batch_alter_table('events') as batch:
        batch.drop_constraint(op.f('uq_events_source_event_id'), type_='unique')
        batch.drop_column('source_event_id')
    op.drop_index('ix_outbox_run', table_name='outbox')
    op.drop_index('ix_outbox_sent', table_name='outbox')
    op.drop_index('ix_outbox_unsent', table_name='outbox')
    op.drop_table('outbox')
