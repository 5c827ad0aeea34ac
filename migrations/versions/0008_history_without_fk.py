"""result_history without a foreign key to repos (a statement-level trigger deletes a deleted repo's
history instead), and its replaced_by_run index only over versions a run replaced

Revision ID: 0008_history_without_fk
Revises: 0007_run_counts
Create Date: 2026-12-07 05:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0008_history_without_fk"
down_revision = "0007_run_counts"
branch_labels = None
depends_on = None

# A rollback or promote archives a version per repo it writes: the foreign key's check was a query per
# archived row (measured at 200k archived rows: 3.7 of the archive's 7.8 s). Every version archived is
# copied from a live result of the same transaction, whose own foreign key (and row lock) already holds
# the repo; what the foreign key still did, deleting a deleted repo's history, is one statement per
# deleting statement here.
CASCADE = ("CREATE FUNCTION delete_repos_history() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
           "DELETE FROM result_history h USING old_rows o WHERE h.repo_id = o.id; RETURN NULL; END $$")
TRIGGER = ("CREATE TRIGGER repos_history_del AFTER DELETE ON repos REFERENCING OLD TABLE AS old_rows "
           "FOR EACH STATEMENT EXECUTE FUNCTION delete_repos_history()")


def upgrade() -> None:
    op.drop_constraint("fk_result_history_repo_id_repos", "result_history", type_="foreignkey")
    op.execute(CASCADE)
    op.execute(TRIGGER)
    # Versions replaced by hand (a pin, an unpin) or archived by a rollback have no replacing run: the
    # index that finds a run's replaced versions need not hold them.
    op.drop_index("ix_result_history_replaced_by_run", "result_history")
    op.create_index("ix_result_history_replaced_by_run", "result_history", ["replaced_by_run"],
                    postgresql_where="replaced_by_run IS NOT NULL")


def downgrade() -> None:
    op.drop_index("ix_result_history_replaced_by_run", "result_history")
    op.create_index("ix_result_history_replaced_by_run", "result_history", ["replaced_by_run"])
    op.execute("DROP TRIGGER repos_history_del ON repos")
    op.execute("DROP FUNCTION delete_repos_history()")
    op.execute("DELETE FROM result_history h WHERE NOT EXISTS (SELECT 1 FROM repos r WHERE r.id = h.repo_id)")
    op.create_foreign_key("fk_result_history_repo_id_repos", "result_history", "repos", ["repo_id"], ["id"],
                          ondelete="CASCADE")
