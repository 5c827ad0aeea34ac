"""Fault injection and the fault tests' final accounting: a TCP proxy in front of PostgreSQL that can
refuse connections and drop the ones it carries; every repo's fate."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import sqlalchemy as sa

from bench import free_port
from db.models import dead_letters, repos, results


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
