from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from db.engine import get_engine
from db.models import metadata


def test_alembic_head_on_an_empty_database_matches_the_models(database_url):
    """The per-test database is a copy of a template built by `alembic upgrade head` alone."""
    with get_engine(database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
