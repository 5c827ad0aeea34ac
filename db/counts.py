"""Rows per table and jobs per state, and each run's progress, as the triggers of migrations
0006_row_counts and 0007_run_counts keep them: what `tagger status`, `tagger runs` and a metrics scrape
read, in time independent of the index's size."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from db.models import JOB_STATES

# Fold the deltas written since the last read into the totals, then read them: the deltas are as many
# as the writing statements since (a few per batch), never the index. Two readers at once are safe: a
# delta deleted by one is skipped by the other, and both update totals in name order (no deadlock).
_FOLD = sa.text("""
    WITH moved AS (DELETE FROM row_count_deltas RETURNING name, n),
    summed AS (SELECT name, sum(n) AS n FROM moved GROUP BY name)
    INSERT INTO row_counts (name, n) SELECT name, n FROM summed ORDER BY name
    ON CONFLICT (name) DO UPDATE SET n = row_counts.n + excluded.n
""")
# By name, through the primary key: row_counts also holds a few rows per run ever started.
_READ = sa.text("SELECT name, n FROM row_counts WHERE name = ANY(CAST(:names AS text[]))")

TABLE_NAMES = ("repos", "results", "dead_letters", *(f"jobs:{state}" for state in JOB_STATES))
# A run's counters: "tagged" (repos it wrote a result for, live or replaced since), "results" (live
# results whose run it is), "jobs:<state>" (repos it was the last to enqueue, by job state).
RUN_COUNTERS = ("tagged", "results", *(f"jobs:{state}" for state in JOB_STATES))
# A canary's: its sample's repos by state, and those promoted.
CANARY_COUNTERS = (*(f"shadow_results:{state}" for state in JOB_STATES), "shadow_results:promoted")


def _read(conn: Connection, names: Sequence[str]) -> dict[str, int]:
    conn.execute(_FOLD)
    return {name: int(n) for name, n in conn.execute(_READ, {"names": list(names)})}


def table_counts(conn: Connection) -> dict[str, int]:
    """{"repos": n, "results": n, "dead_letters": n, "jobs:<state>": n, ...}, exact as of this transaction."""
    return _read(conn, TABLE_NAMES)


def run_counters(conn: Connection, run_ids: Sequence[int],
                 counters: Sequence[str] = RUN_COUNTERS) -> dict[int, dict[str, int]]:
    """Each run's ``counters`` (RUN_COUNTERS, CANARY_COUNTERS; zero where it has none), exact as of this
    transaction."""
    found = _read(conn, [f"run:{run_id}:{counter}" for run_id in run_ids for counter in counters])
    return {run_id: {counter: found.get(f"run:{run_id}:{counter}", 0) for counter in counters}
            for run_id in run_ids}
