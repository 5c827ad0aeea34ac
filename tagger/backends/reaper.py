"""Ends a process's helper processes when that process dies, however it dies.

vLLM runs its engine in processes of its own (EngineCore, and its workers under it). When the worker
process that started them is SIGKILLed, as the OOM killer does, nothing tells them: they live on,
orphans holding the model's memory (on a GPU, the memory the next worker needs). So the worker starts
a reaper: a small process that blocks reading a pipe whose only writer is the worker. The kernel closes
that pipe when the worker dies, for any reason; the reaper then reads EOF and ends the processes it was
given (SIGTERM, then SIGKILL after a grace period), with their descendants. A worker that shuts down
normally closes the engine first and the pipe after: the reaper finds nothing left and exits.

Run as ``python -m tagger.backends.reaper GRACE_S PID:START ...``; START is the process's start time
(/proc/PID/stat), so a PID the kernel has since given to another process is never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

GRACE_S = 5.0


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
    """The worker's end: holds the pipe's only write end for as long as the processes should live."""

    def __init__(self, pids: Iterable[int], grace_s: float = GRACE_S) -> None:
        specs = [f"{pid}:{start}" for pid in pids if (start := start_time(pid)) is not None]
        read_end, self._write_end = os.pipe()  # not inheritable: no later child holds the pipe open
        try:
            self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", "tagger.backends.reaper", str(grace_s), *specs],
                stdin=read_end, stdout=subprocess.DEVNULL, close_fds=True,
            )
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)
        self.watched = len(specs)

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


def main(argv: Sequence[str]) -> None:
    # The worker's own SIGTERM or Ctrl-C may reach its whole process group: the reaper outlives them
    # and acts only when the pipe closes.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    grace_s = float(argv[0])
    targets = [(int(pid), int(start)) for pid, start in (spec.split(":") for spec in argv[1:])]
    while sys.stdin.buffer.read(65536):
        pass
    signalled = reap(targets, grace_s)
    if signalled:
        print(f"reaper: the watching process died; ended {signalled} of its processes", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
