"""events.raw_key: a message key that is not UTF-8 text, kept exactly for replay

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('events', sa.Column('raw_key', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column('events', 'raw_key')
