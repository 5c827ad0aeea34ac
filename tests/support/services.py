"""Where the tests find PostgreSQL and Redis: the servers named by TAGGER_TEST_PG / TAGGER_TEST_REDIS,
else one private pair for the whole session (tagger/servers.py, the `embedded` extra), started the
first time a test needs them and stopped when the session ends. Unit tests never ask: they start none.

``PG_ADMIN_URL`` and ``REDIS_URL`` are resolved on first use (``from tests.support.services import
REDIS_URL`` starts the servers), and exported as TAGGER_TEST_PG / TAGGER_TEST_REDIS so that processes
the tests start find the same servers."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import ExitStack
from functools import cache
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from tagger.servers import postgres_server, redis_server

_stack = ExitStack()


@cache
def _urls() -> tuple[str, str]:
    pg, rd = os.environ.get("TAGGER_TEST_PG"), os.environ.get("TAGGER_TEST_REDIS")
    if pg is None or rd is None:
        folder = Path(tempfile.mkdtemp(prefix="tagger-test-servers-"))
        _stack.callback(shutil.rmtree, folder, ignore_errors=True)
        if pg is None:
            pg = _stack.enter_context(postgres_server(folder, database="postgres")).url
            os.environ["TAGGER_TEST_PG"] = pg
        if rd is None:
            rd = _stack.enter_context(redis_server(folder)).url
            os.environ["TAGGER_TEST_REDIS"] = rd
    return pg, rd


def stop_embedded() -> None:
    """Stop the session's private servers, if any were started, and delete their folder."""
    _stack.close()


def __getattr__(name: str) -> str:
    if name == "PG_ADMIN_URL":
        return _urls()[0]
    if name == "REDIS_URL":
        return _urls()[1]
    raise AttributeError(name)


@cache
def require_services() -> None:
    """Fail loudly, once per session, when a test that needs PostgreSQL and Redis cannot reach them.
    Unit tests never call this: they run anywhere."""
    try:
        pg_url_, redis_url = _urls()
        engine = sa.create_engine(pg_url_)
        with engine.connect():
            pass
        engine.dispose()
        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except Exception as exc:
        pytest.exit(
            f"PostgreSQL ({os.environ.get('TAGGER_TEST_PG', 'embedded')}) and Redis "
            f"({os.environ.get('TAGGER_TEST_REDIS', 'embedded')}) are not reachable: {exc}\n"
            "install the `embedded` extra (make test does), or point TAGGER_TEST_PG / TAGGER_TEST_REDIS at "
            "servers of yours, or run only tests/unit",
            returncode=3,
        )


def pg_url(database: str) -> str:
    return str(sa.engine.make_url(_urls()[0]).set(database=database).render_as_string(hide_password=False))


def pg_admin(sql: str) -> None:
    engine = sa.create_engine(_urls()[0], isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(sql))
    finally:
        engine.dispose()
