"""Where the tests find PostgreSQL and Redis, and the one check that they are up."""

from __future__ import annotations

import os
from functools import cache

import pytest
import redis
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("TAGGER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TAGGER_TEST_REDIS", "redis://127.0.0.1:6379/15")


@cache
def require_services() -> None:
    """Fail loudly, once per session, when a test that needs PostgreSQL and Redis finds them down.
    Unit tests never call this: they run anywhere."""
    try:
        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect():
            pass
        engine.dispose()
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        pytest.exit(
            f"PostgreSQL ({PG_ADMIN_URL}) and Redis ({REDIS_URL}) must be running: {exc}\n"
            "start them with scripts/services.sh (see README.md), or run only tests/unit",
            returncode=3,
        )


def pg_url(database: str) -> str:
    return str(sa.engine.make_url(PG_ADMIN_URL).set(database=database).render_as_string(hide_password=False))


def pg_admin(sql: str) -> None:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(sql))
    finally:
        engine.dispose()
