"""dashboard login sessions and the failed-login limit, shared by every web process

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 17:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'web_sessions',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_web_sessions')),
    )
    op.create_index('ix_web_sessions_expires', 'web_sessions', ['expires_at'], unique=False)
    op.create_table(
        'login_failures',
        sa.Column('address', sa.String(length=64), nullable=False),
        sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('address', name=op.f('pk_login_failures')),
    )
    op.create_index('ix_login_failures_window_start', 'login_failures', ['window_start'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_login_failures_window_start', table_name='login_failures')
    op.drop_table('login_failures')
    op.drop_index('ix_web_sessions_expires', table_name='web_sessions')
    op.drop_table('web_sessions')
