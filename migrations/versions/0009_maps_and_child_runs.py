"""maps and child runs: the items of `flow.map` nodes as step rows, the links of runs
started by `flow.call` or `ctx.start_run` to their parent, and a run's `output`

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 18:07:31.157609
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_run_id', sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column('parent_step', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('detached', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('output', _JSON, nullable=True))
        batch_op.create_index('ix_runs_parent', ['parent_run_id', 'created_at'], unique=False, postgresql_where=sa.text('parent_run_id IS NOT NULL'), sqlite_where=sa.text('parent_run_id IS NOT NULL'))
        batch_op.create_index('ix_runs_live_children', ['parent_step'], unique=False, postgresql_where=sa.text("parent_run_id IS NOT NULL AND status IN ('pending', 'running')"), sqlite_where=sa.text("parent_run_id IS NOT NULL AND status IN ('pending', 'running')"))
        batch_op.create_foreign_key(batch_op.f('fk_runs_parent_run_id_runs'), 'runs', ['parent_run_id'], ['id'], ondelete='SET NULL')

    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('map_node', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('map_index', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('item', _JSON, nullable=True))
        batch_op.create_index('ix_steps_items', ['run_id', 'map_node', 'map_index'], unique=False, postgresql_where=sa.text('map_node IS NOT NULL'), sqlite_where=sa.text('map_node IS NOT NULL'))
        batch_op.create_index('ix_steps_items_open', ['run_id', 'map_node', 'status', 'map_index'], unique=False, postgresql_where=sa.text("map_node IS NOT NULL AND status IN ('pending', 'queued', 'running', 'retrying')"), sqlite_where=sa.text("map_node IS NOT NULL AND status IN ('pending', 'queued', 'running', 'retrying')"))

    with op.batch_alter_table('waits', schema=None) as batch_op:
        batch_op.create_index('ix_waits_open_children', ['run_id'], unique=False, postgresql_where=sa.text("status = 'open' AND kind = 'call'"), sqlite_where=sa.text("status = 'open' AND kind = 'call'"))


def downgrade() -> None:
    with op.batch_alter_table('waits', schema=None) as batch_op:
        batch_op.drop_index('ix_waits_open_children', postgresql_where=sa.text("status = 'open' AND kind = 'call'"), sqlite_where=sa.text("status = 'open' AND kind = 'call'"))

    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.drop_index('ix_steps_items_open', postgresql_where=sa.text("map_node IS NOT NULL AND status IN ('pending', 'queued', 'running', 'retrying')"), sqlite_where=sa.text("map_node IS NOT NULL AND status IN ('pending', 'queued', 'running', 'retrying')"))
        batch_op.drop_index('ix_steps_items', postgresql_where=sa.text('map_node IS NOT NULL'), sqlite_where=sa.text('map_node IS NOT NULL'))
        batch_op.drop_column('item')
        batch_op.drop_column('map_index')
        batch_op.drop_column('map_node')

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_runs_parent_run_id_runs'), type_='foreignkey')
        batch_op.drop_index('ix_runs_live_children', postgresql_where=sa.text("parent_run_id IS NOT NULL AND status IN ('pending', 'running')"), sqlite_where=sa.text("parent_run_id IS NOT NULL AND status IN ('pending', 'running')"))
        batch_op.drop_index('ix_runs_parent', postgresql_where=sa.text('parent_run_id IS NOT NULL'), sqlite_where=sa.text('parent_run_id IS NOT NULL'))
        batch_op.drop_column('output')
        batch_op.drop_column('detached')
        batch_op.drop_column('parent_step')
        batch_op.drop_column('parent_run_id')
