"""Ends a process's helper processes when that process dies, however it dies.

vLLM runs its engine in processes of its own (EngineCore, and its workers under it). When the worker
process that started them is SIGKILLed, as the OOM killer does, nothing tells them: they live on,
orphans holding the model's memory (on a GPU, the memory the next worker needs). So the worker starts
a reaper: a small process that blocks reading a pipe whose only writer is the worker. The kernel closes
that pipe when the worker dies, for any reason; the reaper then reads EOF and ends the processes it was
given (SIGTERM, then SIGKILL after a grace period), with their descendants. A worker that shuts down
normally closes the engine first and the pipe after: the reaper finds nothing left and exits.

The worker starts its reaper *before* the engine, in watch mode: while the pipe is open the reaper
records, a few times a second, every new descendant of the worker (the engine's processes as they are
started), so a worker killed while its engine loads, or before, leaves nothing behind either. A
process started in the last instant before the kill, before the reaper saw it, is covered by the
parent-death signal that :func:`die_with_parent` gives the engine's forked processes.

Run as ``python -m tagger.backends.reaper GRACE_S PID:START ...`` (the processes to end), or
``python -m tagger.backends.reaper GRACE_S --watch PID:START`` (every descendant PID starts from now
on); START is the process's start time (/proc/PID/stat), so a PID the kernel has since given to another
process is never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing.util
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

GRACE_S = 5.0
# How often a watching reaper looks for new descendants (a /proc scan: a few ms): often while the engine
# starts its processes, seldom once the worker says it is up (forked ones die with their parent anyway).
WATCH_INTERVAL_S = 0.1
SETTLED_INTERVAL_S = 2.0
PR_SET_PDEATHSIG = 1


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, None when it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents.setdefault(stat[0], []).append(int(entry.name))
    found: list[int] = []
    pending = list(parents.get(pid, ()))
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(parents.get(child, ()))
    return found


def _direct_children(pid: int) -> list[int] | None:
    """The children of ``pid`` from /proc/PID/task/*/children: a few small reads instead of a scan of
    every process (None where the kernel does not offer the file)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        try:
            found += [int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except FileNotFoundError:
            if not Path(f"/proc/{pid}/task/{task}").exists():
                continue  # the thread ended
            return None
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, cheaply enough to be asked a few times a second."""
    found: list[int] = []
    pending = [pid]
    while pending:
        direct = _direct_children(pending.pop())
        if direct is None:
            return children(pid)
        found += direct
        pending += direct
    return [p for p in found if _stat(p) is not None]


def is_resource_tracker(pid: int) -> bool:
    """multiprocessing's resource tracker serves the whole process, not the engine, and exits by itself
    once every process holding its pipe is gone."""
    try:
        return b"multiprocessing.resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def start_time(pid: int) -> int | None:
    stat = _stat(pid)
    return stat[1] if stat else None


class Reaper:
    """The worker's end: holds the pipe's only write end for as long as the processes should live.
    ``pids``: those processes; ``watch=True`` instead: every process this one starts from now on."""

    def __init__(self, pids: Iterable[int] = (), grace_s: float = GRACE_S, *, watch: bool = False) -> None:
        if watch:
            me = os.getpid()
            specs = ["--watch", f"{me}:{start_time(me)}"]
        else:
            specs = [f"{pid}:{start}" for pid in pids if (start := start_time(pid)) is not None]
        read_end, self._write_end = os.pipe()  # not inheritable: no later child holds the pipe open
        try:
            self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", "tagger.backends.reaper", str(grace_s), *specs],
                stdin=read_end, stdout=subprocess.DEVNULL, close_fds=True,
                # Not in the worker's process group: a Ctrl-C or SIGTERM sent to the group is not for it.
                start_new_session=True,
            )
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)
        self.watched = len(specs)
        if watch:
            self._wait_until_watching()

    def _wait_until_watching(self, timeout: float = 30.0) -> None:
        """Until the reaper took its baseline of what already ran (its first scan): a process started
        before that would be taken for an old one."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if _watching(self.process.pid):
                return
            time.sleep(0.01)

    def settled(self) -> None:
        """The processes to watch are all started (the engine is up): the reaper looks less often."""
        if self.process is not None:
            with contextlib.suppress(OSError):
                os.write(self._write_end, b".")

    def close(self, timeout: float = GRACE_S + 5) -> None:
        """After the processes were shut down: the reaper finds them gone and exits (or ends what is left)."""
        if self.process is None:
            return
        os.close(self._write_end)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def reap(targets: Sequence[tuple[int, int]], grace_s: float) -> int:
    """SIGTERM the targets still alive (and their descendants), SIGKILL whatever is left after
    ``grace_s``. Returns how many processes it signalled."""
    alive = [pid for pid, start in targets if start_time(pid) == start]
    doomed = {pid: start for pid in alive + [c for pid in alive for c in children(pid)]
              if (start := start_time(pid)) is not None}
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(start_time(p) == s for p, s in doomed.items()):
        time.sleep(0.1)
    for pid, start in doomed.items():
        if start_time(pid) == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return len(doomed)


def _watching(pid: int) -> bool:
    """Whether reaper ``pid`` has taken its baseline (it renames itself then)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == WATCHING_NAME
    except OSError:
        return False


WATCHING_NAME = "tagger-reaper"


def _set_name(name: str) -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux's PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def _after_fork(_owner: object) -> None:
    die_with_parent()


def forked_children_die_with_their_parent(owner: object) -> None:
    """Every process multiprocessing forks from here on (the engine's, and theirs) gets SIGKILL when its
    parent dies: no window between a fork and the reaper's next look. ``owner``: the registration lives
    as long as it does (multiprocessing keeps it weakly)."""
    multiprocessing.util.register_after_fork(owner, _after_fork)


def _watch(watched: tuple[int, int], grace_s: float) -> int:
    """Record every new descendant of ``watched`` until standard input closes; then end them."""
    pid, start = watched
    me = os.getpid()
    old = set(descendants(pid))
    _set_name(WATCHING_NAME)
    seen: dict[int, int] = {}
    stdin = sys.stdin.buffer.fileno()
    interval = WATCH_INTERVAL_S
    while True:
        ready, _, _ = select.select([stdin], [], [], interval)
        if ready:
            if not os.read(stdin, 65536):
                break
            interval = SETTLED_INTERVAL_S
        if start_time(pid) != start:
            break  # gone without our seeing EOF yet: the pipe closes with it anyway
        for child in descendants(pid):
            if (child != me and child not in old and child not in seen and not is_resource_tracker(child)
                    and (began := start_time(child)) is not None):
                seen[child] = began
    return reap(list(seen.items()), grace_s)


def main(argv: Sequence[str]) -> None:
    # The worker's own SIGTERM or Ctrl-C may reach its whole process group: the reaper outlives them
    # and acts only when the pipe closes.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    grace_s = float(argv[0])
    if argv[1:2] == ["--watch"]:
        pid, start = argv[2].split(":")
        signalled = _watch((int(pid), int(start)), grace_s)
    else:
        targets = [(int(pid), int(start)) for pid, start in (spec.split(":") for spec in argv[1:])]
        while sys.stdin.buffer.read(65536):
            pass
        signalled = reap(targets, grace_s)
    if signalled:
        print(f"reaper: the watching process died; ended {signalled} of its processes", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
