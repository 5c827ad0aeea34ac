"""a confidence per tag (tagger/scoring.py), and the result's, indexed for `tagger review`

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 17:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tag_scores", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch_op.add_column(sa.Column("confidence", sa.Float(), nullable=True))
        batch_op.create_index("ix_results_confidence", ["confidence"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_index("ix_results_confidence")
        batch_op.drop_column("confidence")
        batch_op.drop_column("tag_scores")
