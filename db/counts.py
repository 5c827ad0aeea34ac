"""Rows per table and jobs per state, as the triggers of migration 0006_row_counts keep them: what
`tagger status` and a metrics scrape read, in time independent of the index's size."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# Fold the deltas written since the last read into the totals, then read them: the deltas are as many
# as the writing statements since (a few per batch), never the index. Two readers at once are safe: a
# delta deleted by one is skipped by the other, and both update totals in name order (no deadlock).
_FOLD = sa.text("""
    WITH moved AS (DELETE FROM row_count_deltas RETURNING name, n),
    summed AS (SELECT name, sum(n) AS n FROM moved GROUP BY name)
    INSERT INTO row_counts (name, n) SELECT name, n FROM summed ORDER BY name
    ON CONFLICT (name) DO UPDATE SET n = row_counts.n + excluded.n
""")
_READ = sa.text("SELECT name, n FROM row_counts")


def table_counts(conn: Connection) -> dict[str, int]:
    """{"repos": n, "results": n, "dead_letters": n, "jobs:<state>": n, ...}, exact as of this transaction."""
    conn.execute(_FOLD)
    return {name: int(n) for name, n in conn.execute(_READ)}
