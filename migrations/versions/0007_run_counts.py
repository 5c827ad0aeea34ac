"""runs' progress kept by the row-count triggers (per run: repos tagged, live results, jobs per state; a
canary's sample per state), and indexes for a run's first and last result: `tagger status`, `tagger
runs` and a metrics scrape read a few rows per run instead of the run's rows

Revision ID: 0007_run_counts
Revises: 0006_row_counts
Create Date: 2026-12-07 05:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0007_run_counts"
down_revision = "0006_row_counts"
branch_labels = None
depends_on = None

# Per-run names: "run:<id>:tagged" (repos the run wrote a result for, live or replaced since),
# "run:<id>:results" (live results whose run it is), "run:<id>:jobs:<state>" (jobs it last enqueued).
# Still one INSERT per writing statement, its rows grouped by run: the workers' batches pay a grouping.
_JOB_NAME = ("CASE WHEN GROUPING(run_id) = 1 THEN 'jobs:' || state ELSE 'run:' || run_id || ':jobs:' || state END")
_BY_RUN = "GROUP BY GROUPING SETS ((state), (state, run_id))"
_KEEP = "(GROUPING(run_id) = 1 OR run_id IS NOT NULL)"


def _shadow(changes: str) -> str:
    """The deltas of a canary's counters from ``changes``' rows (run_id, state, n: +1/-1, p: promoted
    +1/-1/0), grouped per run and state before any name is built."""
    return ("INSERT INTO row_count_deltas (name, n) SELECT v.name, sum(v.delta) FROM (SELECT run_id, state, "
            f"sum(n) AS n, sum(p) AS p FROM ({changes}) AS c GROUP BY run_id, state) AS g CROSS JOIN LATERAL "
            "(VALUES ('run:' || g.run_id || ':shadow_results:' || g.state, g.n), "
            "('run:' || g.run_id || ':shadow_results:promoted', g.p)) AS v(name, delta) "
            "GROUP BY v.name HAVING sum(v.delta) <> 0")


# A results row counts for its run's "tagged" when the run computed it now: tagged_at = changed_at (both
# now()). A restore (rollback, unpin) copies an older version back with its own tagged_at, and a
# redelivered batch of the same run does not change run_id: neither counts. (Not tagged_at > the old
# tagged_at: two runs' batches on one repo commit in either order, and now() is each transaction's start.)
FUNCTIONS = {
    "count_jobs_inserted": f"INSERT INTO row_count_deltas (name, n) SELECT {_JOB_NAME}, count(*) FROM new_rows "
                           f"{_BY_RUN} HAVING {_KEEP}",
    "count_jobs_deleted": f"INSERT INTO row_count_deltas (name, n) SELECT {_JOB_NAME}, -count(*) FROM old_rows "
                          f"{_BY_RUN} HAVING {_KEEP}",
    "count_jobs_updated": f"INSERT INTO row_count_deltas (name, n) SELECT {_JOB_NAME}, sum(n) FROM ("
                          "SELECT state, run_id, 1 AS n FROM new_rows UNION ALL SELECT state, run_id, -1 FROM old_rows"
                          f") AS d {_BY_RUN} HAVING sum(n) <> 0 AND {_KEEP}",
    "count_results_inserted": "INSERT INTO row_count_deltas (name, n) SELECT v.name, g.n FROM ("
                              "SELECT run_id, GROUPING(run_id) AS whole, count(*) AS n FROM new_rows "
                              "GROUP BY GROUPING SETS ((), (run_id))) AS g CROSS JOIN LATERAL (VALUES "
                              "(CASE WHEN g.whole = 1 THEN 'results' END), ('run:' || g.run_id || ':results'), "
                              "('run:' || g.run_id || ':tagged')) AS v(name) WHERE g.n > 0 AND v.name IS NOT NULL",
    "count_results_deleted": "INSERT INTO row_count_deltas (name, n) SELECT v.name, -g.n FROM ("
                             "SELECT run_id, GROUPING(run_id) AS whole, count(*) AS n FROM old_rows "
                             "GROUP BY GROUPING SETS ((), (run_id))) AS g CROSS JOIN LATERAL (VALUES "
                             "(CASE WHEN g.whole = 1 THEN 'results' END), ('run:' || g.run_id || ':results')) "
                             "AS v(name) WHERE g.n > 0 AND v.name IS NOT NULL",
    "count_results_updated": "INSERT INTO row_count_deltas (name, n) SELECT v.name, sum(v.delta) FROM ("
                             "SELECT o.run_id AS was, w.run_id AS now, count(*) AS moved, "
                             "count(*) FILTER (WHERE w.tagged_at = w.changed_at) AS fresh "
                             "FROM old_rows AS o JOIN new_rows AS w ON w.repo_id = o.repo_id "
                             "WHERE w.run_id IS DISTINCT FROM o.run_id GROUP BY o.run_id, w.run_id) AS g "
                             "CROSS JOIN LATERAL (VALUES ('run:' || g.was || ':results', -g.moved), "
                             "('run:' || g.now || ':results', g.moved), ('run:' || g.now || ':tagged', g.fresh)) "
                             "AS v(name, delta) WHERE v.name IS NOT NULL GROUP BY v.name HAVING sum(v.delta) <> 0",
    # A canary's sample per state, and how much of it was promoted: "run:<id>:shadow_results:<state>",
    # "run:<id>:shadow_results:promoted".
    "count_shadow_inserted": _shadow("SELECT run_id, state, 1 AS n, (promoted_at IS NOT NULL)::int AS p "
                                     "FROM new_rows"),
    "count_shadow_updated": _shadow("SELECT run_id, state, 1 AS n, (promoted_at IS NOT NULL)::int AS p "
                                    "FROM new_rows UNION ALL SELECT run_id, state, -1, -(promoted_at IS NOT NULL)::int "
                                    "FROM old_rows"),
    "count_shadow_deleted": _shadow("SELECT run_id, state, -1 AS n, -(promoted_at IS NOT NULL)::int AS p "
                                    "FROM old_rows"),
    # TRUNCATE: the table's counts go back to zero, its per-run ones too (a run's "tagged" stays: it
    # counts what the run wrote, not what is left).
    "count_truncated": "INSERT INTO row_count_deltas (name, n) SELECT name, -sum(n) FROM ("
                       "SELECT name, n FROM row_counts UNION ALL SELECT name, n FROM row_count_deltas) AS c "
                       "WHERE name = TG_TABLE_NAME OR name LIKE TG_TABLE_NAME || ':%' "
                       "OR name LIKE 'run:%:' || TG_TABLE_NAME OR name LIKE 'run:%:' || TG_TABLE_NAME || ':%' "
                       "GROUP BY name",
}
# 0006_row_counts's bodies of the functions replaced here, for the downgrade.
PREVIOUS = {
    "count_jobs_inserted": "INSERT INTO row_count_deltas (name, n) SELECT 'jobs:' || state, count(*) "
                           "FROM new_rows GROUP BY state",
    "count_jobs_deleted": "INSERT INTO row_count_deltas (name, n) SELECT 'jobs:' || state, -count(*) "
                          "FROM old_rows GROUP BY state",
    "count_jobs_updated": "INSERT INTO row_count_deltas (name, n) SELECT 'jobs:' || state, sum(n) FROM ("
                          "SELECT state, 1 AS n FROM new_rows UNION ALL SELECT state, -1 FROM old_rows) AS d "
                          "GROUP BY state HAVING sum(n) <> 0",
    "count_truncated": "INSERT INTO row_count_deltas (name, n) SELECT name, -sum(n) FROM ("
                       "SELECT name, n FROM row_counts UNION ALL SELECT name, n FROM row_count_deltas) AS c "
                       "WHERE name = TG_TABLE_NAME OR name LIKE TG_TABLE_NAME || ':%' GROUP BY name",
}
RESULTS_TRIGGERS = (("results_count_ins", "INSERT", "NEW TABLE AS new_rows", "count_results_inserted"),
                    ("results_count_upd", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                     "count_results_updated"),
                    ("results_count_del", "DELETE", "OLD TABLE AS old_rows", "count_results_deleted"))


def _sql(statement: str) -> None:
    op.execute(statement.replace(":", "\\:"))  # ':tagged' in a name is text, not a bind parameter

SHADOW_TRIGGERS = (("shadow_results_count_ins", "INSERT", "NEW TABLE AS new_rows", "count_shadow_inserted"),
                   ("shadow_results_count_upd", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                    "count_shadow_updated"),
                   ("shadow_results_count_del", "DELETE", "OLD TABLE AS old_rows", "count_shadow_deleted"))
NEW_FUNCTIONS = ("count_results_inserted", "count_results_updated", "count_results_deleted",
                 "count_shadow_inserted", "count_shadow_updated", "count_shadow_deleted")


def _function(name: str, body: str) -> None:
    _sql(f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body}; "
         "RETURN NULL; END $$")


def _trigger(trigger: str, event: str, referencing: str, function: str, table: str = "results") -> None:
    op.execute(f"CREATE TRIGGER {trigger} AFTER {event} ON {table} REFERENCING {referencing} "
               f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()")


def upgrade() -> None:
    for name, body in FUNCTIONS.items():
        _function(name, body)
    op.execute("DROP TRIGGER results_count_ins ON results")
    op.execute("DROP TRIGGER results_count_del ON results")
    for trigger in RESULTS_TRIGGERS:
        _trigger(*trigger)
    for trigger in SHADOW_TRIGGERS:
        _trigger(*trigger, table="shadow_results")
    op.execute("CREATE TRIGGER shadow_results_count_trunc AFTER TRUNCATE ON shadow_results FOR EACH STATEMENT "
               "EXECUTE FUNCTION count_truncated()")
    # A run's first and last result: two index probes per table instead of reading its rows. Results
    # are rewritten out of place (every column changes), so the wider key costs no HOT update.
    op.drop_index("ix_results_run_id", "results")
    op.create_index("ix_results_run_id_tagged_at", "results", ["run_id", "tagged_at"])
    op.drop_index("ix_result_history_run_id", "result_history")
    op.create_index("ix_result_history_run_id_tagged_at", "result_history", ["run_id", "tagged_at"])
    # A canary's first and last result: two probes too (its sweeper's reads go through it as well).
    op.create_index("ix_shadow_results_run_id_state_updated_at", "shadow_results", ["run_id", "state", "updated_at"])
    # The runs there are now, counted once (the triggers above hold their writers back until commit).
    _sql("""
        INSERT INTO row_counts (name, n)
        SELECT 'run:' || run_id || ':tagged', count(DISTINCT repo_id) FROM (
            SELECT run_id, repo_id FROM results WHERE run_id IS NOT NULL
            UNION ALL SELECT run_id, repo_id FROM result_history WHERE run_id IS NOT NULL) AS written
        GROUP BY run_id
        UNION ALL SELECT 'run:' || run_id || ':results', count(*) FROM results WHERE run_id IS NOT NULL
        GROUP BY run_id
        UNION ALL SELECT 'run:' || run_id || ':jobs:' || state, count(*) FROM jobs WHERE run_id IS NOT NULL
        GROUP BY run_id, state
        UNION ALL SELECT 'run:' || run_id || ':shadow_results:' || state, count(*) FROM shadow_results
        GROUP BY run_id, state
        UNION ALL SELECT 'run:' || run_id || ':shadow_results:promoted', count(*) FROM shadow_results
        WHERE promoted_at IS NOT NULL GROUP BY run_id
    """)


def downgrade() -> None:
    _sql("DELETE FROM row_count_deltas WHERE name LIKE 'run:%'")
    _sql("DELETE FROM row_counts WHERE name LIKE 'run:%'")
    op.drop_index("ix_result_history_run_id_tagged_at", "result_history")
    op.create_index("ix_result_history_run_id", "result_history", ["run_id"])
    op.drop_index("ix_results_run_id_tagged_at", "results")
    op.create_index("ix_results_run_id", "results", ["run_id"])
    op.drop_index("ix_shadow_results_run_id_state_updated_at", "shadow_results")
    for trigger, *_ in RESULTS_TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger} ON results")
    for trigger in (*(t for t, *_ in SHADOW_TRIGGERS), "shadow_results_count_trunc"):
        op.execute(f"DROP TRIGGER {trigger} ON shadow_results")
    for name in NEW_FUNCTIONS:
        op.execute(f"DROP FUNCTION {name}()")
    _trigger("results_count_ins", "INSERT", "NEW TABLE AS new_rows", "count_inserted")
    _trigger("results_count_del", "DELETE", "OLD TABLE AS old_rows", "count_deleted")
    for name, body in PREVIOUS.items():
        _function(name, body)
