"""A pytest plugin (``-p tests.support.leaks`` in pyproject.toml): a test that leaves a child process
running fails, and the process is killed.

A leaked process is how a test that failed once makes later ones fail too: its pipes and its Popen are
garbage-collected in whatever test runs then, as "unraisable" ResourceWarnings (an error under
filterwarnings=error), and it may hold a database or a queue another test waits on. Processes a fixture
starts at setup (a session's servers) are not the test's: only those started by the test's body that
are still there after its teardown count; nor the session's embedded PostgreSQL and Redis
(tests.support.services starts them on first use, which may be inside a test).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tagger import servers

_KEY = pytest.StashKey[set[int]]()


def _processes() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, state) of every process, from /proc."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:  # exited while we looked
            continue
        found[int(entry.name)] = (int(fields[1]), fields[0])
    return found


def _descendants(table: dict[int, tuple[int, str]], roots: set[int]) -> set[int]:
    found, frontier = set(), set(roots)
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _children() -> set[int]:
    """This process's descendants that still run (zombies excluded: they hold nothing but a pid), but for
    the embedded servers and theirs."""
    table = _processes()
    embedded = {proc.pid for proc in getattr(servers, "_live", ())}
    ours = _descendants(table, {os.getpid()}) - embedded - _descendants(table, embedded)
    return {pid for pid in ours if table[pid][1] != "Z"}


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120] or str(pid)
    except OSError:
        return str(pid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    finally:
        item.stash[_KEY] = _children()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    result = yield
    before = item.stash.get(_KEY, None)
    if before is None:
        return result
    leaked = []
    for pid in sorted(_children() - before):
        description = _describe(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it was on its way out
            continue
        leaked.append(description)
    if leaked:
        raise AssertionError(f"the test left {len(leaked)} process(es) running (now killed): {'; '.join(leaked)}")
    return result
