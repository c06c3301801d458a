"""runs.traceparent: the trace context of a run, for its step attempts' spans

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('runs', sa.Column('traceparent', sa.String(length=128), nullable=True))


def downgrade() -> None:
    op.drop_column('runs', 'traceparent')
