import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from db.engine import get_engine
from db.models import metadata
from db.results import upsert_results


def test_alembic_head_on_an_empty_database_matches_the_models(database_url):
    """The per-test database is a copy of a template built by `alembic upgrade head` alone."""
    with get_engine(database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_run_counters_are_counted_on_upgrade_and_dropped_on_downgrade(database_url):
    """0007_run_counts on an index with runs: their counters are counted from the rows; the downgrade
    leaves 0006's schema (upgrading again gives the models' exactly)."""
    from alembic import command

    from db.counts import CANARY_COUNTERS, run_counters
    from db.migrate import alembic_config
    from tests.integration.test_index_scale import add_repos, exact_run_counters, ids, new_run, row

    config = alembic_config(database_url)
    command.downgrade(config, "0006_row_counts")
    add_repos(database_url)
    first, second = new_run(database_url), new_run(database_url)
    with get_engine(database_url).begin() as conn:
        conn.execute(sa.text("INSERT INTO jobs (repo_id, state, run_id) SELECT id, "
                             "CASE WHEN id < 'r00100' THEN 'done' ELSE 'queued' END, :run FROM repos"), {"run": first})
        upsert_results(conn, [row(i, [1], first) for i in ids(100)])
    with get_engine(database_url).begin() as conn:
        upsert_results(conn, [row(i, [2], second) for i in ids(50, start=80)])
    canary = new_run(database_url, "canary")
    with get_engine(database_url).begin() as conn:
        conn.execute(sa.text("INSERT INTO shadow_results (run_id, repo_id, state, promoted_at) SELECT :run, id, "
                             "CASE WHEN id < 'r00010' THEN 'done' ELSE 'queued' END, "
                             "CASE WHEN id < 'r00004' THEN now() END FROM repos WHERE id < 'r00030'"), {"run": canary})
    command.upgrade(config, "head")
    with get_engine(database_url).begin() as conn:
        kept = run_counters(conn, [first, second])
        sample = run_counters(conn, [canary], CANARY_COUNTERS)[canary]
    assert kept == exact_run_counters(database_url, [first, second])
    assert (kept[first]["tagged"], kept[first]["results"], kept[second]["tagged"]) == (100, 80, 50)
    assert sample == {"shadow_results:queued": 20, "shadow_results:done": 10, "shadow_results:failed": 0,
                      "shadow_results:dead": 0, "shadow_results:promoted": 4}
    command.downgrade(config, "0006_row_counts")
    with get_engine(database_url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM row_counts WHERE name LIKE 'run:%'")).scalar_one() == 0
    command.upgrade(config, "head")
    with get_engine(database_url).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
