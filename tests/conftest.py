"""Real PostgreSQL and Redis: a template database per test session, a fresh copy per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from db.engine import get_engine
from tagger.settings import Settings, get_settings

PG_ADMIN_URL = os.environ.get("TAGGER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TAGGER_TEST_REDIS", "redis://127.0.0.1:6379/15")


def _pg_url(database: str) -> str:
    return str(sa.engine.make_url(PG_ADMIN_URL).set(database=database).render_as_string(hide_password=False))


def _admin(sql: str) -> None:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(sql))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """Migrated once per session with `alembic upgrade head` and the shipped taxonomy."""
    from db.migrate import upgrade

    name = f"tagger_tpl_{uuid.uuid4().hex[:10]}"
    url = _pg_url(name)
    upgrade(url, Settings().taxonomy_file)
    get_engine(url).dispose()
    get_engine.cache_clear()
    yield name
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(template_db: str) -> Iterator[str]:
    name = f"tagger_t_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = _pg_url(name)
    yield url
    engine = get_engine(url)
    engine.dispose()
    get_engine.cache_clear()
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def queue_name() -> Iterator[str]:
    """A queue of its own per test, so tests (and people) sharing the Redis server never cross."""
    name = f"tagger-test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def settings(database_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings for this test, also exported as TAGGER_* so in-process code and the CLI agree."""
    values = {
        "TAGGER_DATABASE_URL": database_url,
        "TAGGER_BROKER_URL": REDIS_URL,
        "TAGGER_QUEUE": queue_name,
        "TAGGER_BACKEND": "keyword",
        "TAGGER_RETRY_BASE_S": "0.01",
        "TAGGER_RETRY_MAX_S": "0.05",
        "TAGGER_LOG_FORMAT": "json",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """The environment for CLI and worker subprocesses of this test."""
    return {k: v for k, v in os.environ.items() if k.startswith(("TAGGER_", "PATH", "HOME", "LANG", "LC_", "PYTHON"))}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail loudly, once, when the services the tests need are down."""
    try:
        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect():
            pass
        engine.dispose()
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:  # pragma: no cover - environment problem
        raise pytest.UsageError(
            f"PostgreSQL ({PG_ADMIN_URL}) and Redis ({REDIS_URL}) must be running: {exc}\n"
            "start them with ../shared/services.sh (see README.md)"
        ) from exc


