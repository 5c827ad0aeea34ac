"""Fixtures of every test folder. Unit tests use none that touch a service; integration and acceptance
tests get real PostgreSQL (a template database per session, a fresh copy per test) and Redis (a queue
of their own per test): the servers of TAGGER_TEST_PG / TAGGER_TEST_REDIS, else a private pair started
for the session (tests/support/services.py)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from db.engine import get_engine
from db.migrate import upgrade
from tagger.settings import Settings, load_settings
from tests.support import services
from tests.support.services import pg_admin, pg_url, require_services, stop_embedded


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_embedded()
    # llama-cpp-python opens /dev/null twice at import and never closes it: the interpreter's exit would
    # report both files as ResourceWarnings after the summary, as if a test had leaked them.
    llama_utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        stream = getattr(llama_utils, name, None)
        if stream is not None:
            stream.close()


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """Migrated once per session with `alembic upgrade head` and the shipped taxonomy."""
    require_services()
    name = f"tagger_tpl_{uuid.uuid4().hex[:10]}"
    url = pg_url(name)
    upgrade(url, Settings().taxonomy_file)
    get_engine(url).dispose()
    get_engine.cache_clear()
    yield name
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(template_db: str) -> Iterator[str]:
    name = f"tagger_t_{uuid.uuid4().hex[:12]}"
    pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = pg_url(name)
    yield url
    engine = get_engine(url)
    engine.dispose()
    get_engine.cache_clear()
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def queue_name() -> Iterator[str]:
    """A queue of its own per test, so tests (and people) sharing the Redis server never cross."""
    require_services()
    name = f"tagger-test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(services.REDIS_URL)
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def settings(database_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for this test, also exported as TAGGER_* so subprocesses and in-process CLI calls agree."""
    values = {
        "TAGGER_DATABASE_URL": database_url,
        "TAGGER_BROKER_URL": services.REDIS_URL,
        "TAGGER_QUEUE": queue_name,
        "TAGGER_BACKEND": "keyword",
        "TAGGER_RETRY_BASE_S": "0.01",
        "TAGGER_RETRY_MAX_S": "0.05",
        "TAGGER_LOG_FORMAT": "json",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return load_settings()


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """The environment for CLI and worker subprocesses of this test."""
    return {k: v for k, v in os.environ.items() if k.startswith(("TAGGER_", "PATH", "HOME", "LANG", "LC_", "PYTHON"))}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
