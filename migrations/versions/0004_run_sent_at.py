"""when a run finished sending its batches: `tagger runs` tells a run still sending from one running

Revision ID: 0004_run_sent_at
Revises: 0003_arrays
Create Date: 2026-12-06 22:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_run_sent_at"
down_revision = "0003_arrays"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    # Runs recorded before: their sending is long over (when exactly is not known: their start).
    op.execute("UPDATE runs SET sent_at = started_at")


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("sent_at")
