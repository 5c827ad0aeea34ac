"""Fault injection for the fault tests: a private Redis server, and a TCP proxy in front of PostgreSQL
that can refuse connections and drop the ones it carries."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from db.models import dead_letters, repos, results
from tests.helpers import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own, without persistence: FLUSHALL and visibility-timeout
    restores here touch nobody else's queues (kombu's unacked index is shared by every queue of a db)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=1)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(up, timeout=20, what="private redis-server up")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to an upstream address. ``cut()`` drops every connection it carries
    and refuses new ones (the port is closed) until ``restore()``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.accepted = 0
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut: the listener is closed
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut while we connected
                    client.close()
                    server.close()
                    continue
                self._sockets |= {client, server}
                self.accepted += 1
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def accounting(database_url: str) -> dict[str, Any]:
    """Every repo's fate: tagged (one result row), dead (one dead letter), both, or neither."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            repo_ids = set(conn.execute(sa.select(repos.c.id)).scalars())
            result_rows = list(conn.execute(sa.select(results.c.repo_id)).scalars())
            dead_rows = list(conn.execute(sa.select(dead_letters.c.repo_id)).scalars())
    finally:
        engine.dispose()
    tagged, dead = set(result_rows), set(dead_rows)
    return {
        "repos": repo_ids,
        "tagged": tagged,
        "dead": dead,
        "duplicate_rows": len(result_rows) - len(tagged) + len(dead_rows) - len(dead),
        "both": tagged & dead,
        "neither": repo_ids - tagged - dead,
    }


def assert_every_repo_accounted(database_url: str, *, tagged: int, dead: int = 0) -> dict[str, Any]:
    """The fault tests' final check: one result or one dead letter per repo, the expected split, no repo in neither."""
    seen = accounting(database_url)
    assert seen["neither"] == set(), f"{len(seen['neither'])} repos have neither a result nor a dead letter"
    assert seen["both"] == set(), f"repos with a result and a dead letter: {sorted(seen['both'])[:10]}"
    assert seen["duplicate_rows"] == 0
    assert (len(seen["tagged"]), len(seen["dead"])) == (tagged, dead)
    assert len(seen["repos"]) == tagged + dead
    return seen


def log_events(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    """The structlog JSON events of a worker's log file (Celery's own lines are skipped)."""
    events = []
    if not path.exists():
        return events
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event is None or record.get("event") == event:
            events.append(record)
    return events

