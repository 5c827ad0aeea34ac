"""Processes of the tests: waiting on state, the real CLI (in-process or a subprocess), worker subprocesses.
Free ports and private redis-servers come from the benchmarks' plumbing (`bench`), one implementation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from bench import wait_for
from cli import cli

TAGGER = [sys.executable, "-m", "cli"]


def default_signals() -> None:
    """``preexec_fn`` of a child that a test interrupts: SIGINT (and SIGTERM) at their defaults, whatever the
    test run inherited. A suite started as a background job of a script (`pytest &`), or under
    `trap '' INT`, runs with SIGINT ignored, and an ignored disposition passes to every child: Python
    then installs no KeyboardInterrupt handler and Ctrl-C would never reach the command under test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def popen(args: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[Any]]:
    """``subprocess.Popen(args, ...)`` with default signal dispositions, killed and reaped (its pipes
    closed) on the way out even when the test fails: no test leaves a process or an open file behind."""
    proc = subprocess.Popen(args, preexec_fn=default_signals, **kwargs)
    with proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    return wait_for(predicate, timeout, what or str(predicate), interval)


def run_cli(env: dict[str, str], *args: str, check: bool = True, timeout: float = 120,
            stdin: str | None = None, in_process: bool = True) -> subprocess.CompletedProcess[str]:
    """`tagger ARGS...` with ``env`` as its whole TAGGER_* environment: in this process through Click's
    runner, or, with ``in_process=False``, as a real subprocess where the process itself is under test
    (signals, pipes, start-up). An exception that escapes the command in-process fails the test, as the
    traceback a user would see."""
    if in_process:
        overrides: dict[str, str | None] = {k: None for k in os.environ if k.startswith("TAGGER_")}
        overrides.update(env)
        outcome = CliRunner().invoke(cli, list(args), env=overrides, input=stdin)
        if outcome.exception is not None and not isinstance(outcome.exception, SystemExit):
            raise AssertionError(f"tagger {' '.join(args)} raised {outcome.exception!r}\n{outcome.stderr}") \
                from outcome.exception
        result = subprocess.CompletedProcess([*TAGGER, *args], outcome.exit_code, outcome.stdout, outcome.stderr)
    else:
        result = subprocess.run([*TAGGER, *args], env=env, capture_output=True, text=True, timeout=timeout,
                                input=stdin)
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
    proc = subprocess.Popen([*TAGGER, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=default_signals)
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
