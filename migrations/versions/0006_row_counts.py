"""the whole index: row counts kept by triggers (status and metrics read them), results.changed_at
(incremental export, the tag rate), history's replaced_at indexed (removals, pruning), pruned runs, lz4
READMEs

Revision ID: 0006_row_counts
Revises: 0005_readme_size
Create Date: 2026-12-06 23:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_row_counts"
down_revision = "0005_readme_size"
branch_labels = None
depends_on = None

COUNTED = ("repos", "results", "dead_letters")  # rows counted as a whole; jobs per state

# Statement-level triggers with transition tables: one INSERT of the statement's net change per writing
# statement, never a lock on a shared counter row (workers' batches never wait on one another for it).
FUNCTIONS = {
    "count_inserted": "INSERT INTO row_count_deltas (name, n) SELECT TG_TABLE_NAME, count(*) FROM new_rows "
                      "HAVING count(*) > 0",
    "count_deleted": "INSERT INTO row_count_deltas (name, n) SELECT TG_TABLE_NAME, -count(*) FROM old_rows "
                     "HAVING count(*) > 0",
    "count_jobs_inserted": "INSERT INTO row_count_deltas (name, n) SELECT 'jobs:' || state, count(*) "
                           "FROM new_rows GROUP BY state",
    "count_jobs_deleted": "INSERT INTO row_count_deltas (name, n) SELECT 'jobs:' || state, -count(*) "
                          "FROM old_rows GROUP BY state",
    "count_jobs_updated": "INSERT INTO row_count_deltas (name, n) SELECT 'jobs:' || state, sum(n) FROM ("
                          "SELECT state, 1 AS n FROM new_rows UNION ALL SELECT state, -1 FROM old_rows) AS d "
                          "GROUP BY state HAVING sum(n) <> 0",
    # TRUNCATE: the table's counts go back to zero.
    "count_truncated": "INSERT INTO row_count_deltas (name, n) SELECT name, -sum(n) FROM ("
                       "SELECT name, n FROM row_counts UNION ALL SELECT name, n FROM row_count_deltas) AS c "
                       "WHERE name = TG_TABLE_NAME OR name LIKE TG_TABLE_NAME || ':%' GROUP BY name",
}


def _triggers() -> list[tuple[str, str, str, str, str]]:
    """(trigger, table, event and transition table, function)"""
    found: list[tuple[str, str, str, str, str]] = []
    for table in COUNTED:
        found += [(f"{table}_count_ins", table, "INSERT", "NEW TABLE AS new_rows", "count_inserted"),
                  (f"{table}_count_del", table, "DELETE", "OLD TABLE AS old_rows", "count_deleted")]
    found += [("jobs_count_ins", "jobs", "INSERT", "NEW TABLE AS new_rows", "count_jobs_inserted"),
              ("jobs_count_upd", "jobs", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows",
               "count_jobs_updated"),
              ("jobs_count_del", "jobs", "DELETE", "OLD TABLE AS old_rows", "count_jobs_deleted")]
    found += [(f"{table}_count_trunc", table, "TRUNCATE", "", "count_truncated") for table in (*COUNTED, "jobs")]
    return found


def upgrade() -> None:
    op.add_column("results", sa.Column("changed_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                                       nullable=False))
    op.execute("UPDATE results SET changed_at = tagged_at")
    op.create_index("ix_results_changed_at", "results", ["changed_at"])
    op.create_index("ix_result_history_replaced_at", "result_history", ["replaced_at"])
    # READMEs compressed with lz4 rather than pglz: an import's server time was mostly pglz (measured:
    # 4,000 rows/s against 13,600 of 4.9 KB READMEs). A server built without lz4 keeps pglz.
    op.execute("DO $$ BEGIN ALTER TABLE repos ALTER COLUMN readme SET COMPRESSION lz4; "
               "EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN NULL; END $$")
    op.create_table("row_counts", sa.Column("name", sa.Text(), nullable=False),
                    sa.Column("n", sa.BigInteger(), nullable=False),
                    sa.PrimaryKeyConstraint("name", name="pk_row_counts"))
    op.create_table("row_count_deltas", sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
                    sa.Column("name", sa.Text(), nullable=False), sa.Column("n", sa.BigInteger(), nullable=False),
                    sa.PrimaryKeyConstraint("id", name="pk_row_count_deltas"))
    op.create_table("pruned_runs", sa.Column("run_id", sa.Integer(), autoincrement=False, nullable=False),
                    sa.Column("versions", sa.BigInteger(), nullable=False),
                    sa.Column("pruned_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
                    sa.PrimaryKeyConstraint("run_id", name="pk_pruned_runs"))
    for name, body in FUNCTIONS.items():
        op.execute(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body}; "
                   "RETURN NULL; END $$")
    for trigger, table, event, referencing, function in _triggers():
        if event == "TRUNCATE":
            op.execute(f"CREATE TRIGGER {trigger} AFTER TRUNCATE ON {table} FOR EACH STATEMENT "
                       f"EXECUTE FUNCTION {function}()")
        else:
            op.execute(f"CREATE TRIGGER {trigger} AFTER {event} ON {table} REFERENCING {referencing} "
                       f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()")
    # What is there now, counted once.
    op.execute("INSERT INTO row_counts (name, n) "
               + " UNION ALL ".join(f"SELECT '{table}', count(*) FROM {table}" for table in COUNTED)
               + " UNION ALL SELECT 'jobs:' || state, count(*) FROM jobs GROUP BY state")


def downgrade() -> None:
    for trigger, table, *_ in _triggers():
        op.execute(f"DROP TRIGGER {trigger} ON {table}")
    for name in FUNCTIONS:
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_table("pruned_runs")
    op.drop_table("row_count_deltas")
    op.drop_table("row_counts")
    op.execute("ALTER TABLE repos ALTER COLUMN readme SET COMPRESSION default")
    op.drop_index("ix_result_history_replaced_at", "result_history")
    op.drop_index("ix_results_changed_at", "results")
    op.drop_column("results", "changed_at")
