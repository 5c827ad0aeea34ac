"""repos.readme_size: the original size of a README stored cut to TAGGER_README_MAX_BYTES

Revision ID: 0005_readme_size
Revises: 0004_run_sent_at
Create Date: 2026-12-06 22:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_readme_size"
down_revision = "0004_run_sent_at"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("repos", schema=None) as batch_op:
        batch_op.add_column(sa.Column("readme_size", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("repos", schema=None) as batch_op:
        batch_op.drop_column("readme_size")
