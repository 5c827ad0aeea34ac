"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24 23:54:51.914565
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("repo_id", sa.Text(), nullable=False),
        sa.Column("error_class", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("repo_id", name=op.f("pk_dead_letters")),
    )
    op.create_table(
        "repos",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), server_default="", nullable=False),
        sa.Column("readme", sa.Text(), nullable=False),
        sa.Column("readme_hash", sa.Text(), nullable=False),
        sa.Column("readme_version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repos")),
    )
    op.create_table(
        "tags",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tags")),
        sa.UniqueConstraint("name", name=op.f("uq_tags_name")),
    )
    op.create_table(
        "taxonomy_versions",
        sa.Column("version", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("content_hash", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_taxonomy_versions")),
        sa.UniqueConstraint("content_hash", name=op.f("uq_taxonomy_versions_content_hash")),
    )
    op.create_table(
        "jobs",
        sa.Column("repo_id", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("task_id", sa.Text(), nullable=True),
        sa.CheckConstraint("state IN ('queued', 'done', 'failed', 'dead')", name=op.f("ck_jobs_state")),
        sa.ForeignKeyConstraint(["repo_id"], ["repos.id"], name=op.f("fk_jobs_repo_id_repos"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("repo_id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_state_queued_at", ["state", "queued_at"], unique=False)

    op.create_table(
        "results",
        sa.Column("repo_id", sa.Text(), nullable=False),
        sa.Column(
            "tag_ids", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("backend", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("prompt_version", sa.Text(), nullable=False),
        sa.Column("taxonomy_version", sa.Integer(), nullable=False),
        sa.Column("readme_hash", sa.Text(), nullable=False),
        sa.Column("readme_version", sa.Integer(), nullable=False),
        sa.Column("raw_output", sa.Text(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("tagged_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(["repo_id"], ["repos.id"], name=op.f("fk_results_repo_id_repos"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("repo_id", name=op.f("pk_results")),
    )


def downgrade() -> None:
    op.drop_table("results")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_state_queued_at")

    op.drop_table("jobs")
    op.drop_table("taxonomy_versions")
    op.drop_table("tags")
    op.drop_table("repos")
    op.drop_table("dead_letters")
