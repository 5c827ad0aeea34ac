"""a result's tag ids as int[] and its scores as real[] instead of JSONB (measured: BENCHMARKS.md)

Revision ID: 0003_arrays
Revises: 0002_runs
Create Date: 2026-12-06 22:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0003_arrays"
down_revision = "0002_runs"
branch_labels = None
depends_on = None

# (table, column, array type); a subquery cannot convert a column in place, a function can.
COLUMNS = [
    (table, column, kind)
    for table in ("results", "result_history", "shadow_results")
    for column, kind in (("tag_ids", "int"), ("tag_scores", "real"))
] + [("manual_tags", "tag_ids", "int")]


def upgrade() -> None:
    for kind in ("int", "real"):
        # STRICT: NULL stays NULL; an empty JSON array becomes an empty array, in the same order.
        op.execute(f"""
            CREATE FUNCTION pg_temp.jsonb_to_{kind}s(j jsonb) RETURNS {kind}[] LANGUAGE sql IMMUTABLE STRICT AS $$
                SELECT coalesce(array_agg(CAST(e.value AS {kind}) ORDER BY e.n), '{{}}')
                FROM jsonb_array_elements_text(j) WITH ORDINALITY AS e(value, n)
            $$
        """)
    for table, column, kind in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {kind}[] USING pg_temp.jsonb_to_{kind}s({column})")


def downgrade() -> None:
    for table, column, _kind in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE jsonb USING to_jsonb({column})")
