"""Shared test helpers: waiting on state, running the real CLI, worker subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
READMES = FIXTURES / "readmes"
TAGGER = [sys.executable, "-m", "tagger"]


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def run_cli(env: dict[str, str], *args: str, check: bool = True, timeout: float = 120,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*TAGGER, *args], env=env, capture_output=True, text=True, timeout=timeout, input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"tagger {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def status(env: dict[str, str]) -> dict[str, int]:
    result: dict[str, int] = json.loads(run_cli(env, "status", "--json").stdout)
    return result


@contextmanager
def tagger_process(env: dict[str, str], *args: str, log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A real `tagger ARGS...` subprocess in its own process group, stopped on exit (SIGTERM, then SIGKILL)."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([*TAGGER, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


def worker_process(env: dict[str, str], *extra: str, log: Path | None = None):  # type: ignore[no-untyped-def]
    """A real `tagger worker` subprocess."""
    return tagger_process(env, "worker", *extra, log=log)


def readme_fixture_rows() -> list[dict[str, str]]:
    """The 20 acceptance READMEs: the user's example (7462) and 19 we wrote."""
    names = json.loads((READMES / "names.json").read_text(encoding="utf-8"))
    rows = []
    for path in sorted(READMES.glob("*.md")):
        rows.append({"id": path.stem, "name": names.get(path.stem, ""), "readme": path.read_text(encoding="utf-8")})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
