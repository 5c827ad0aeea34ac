"""A pytest plugin for the secrets test (tests/integration/test_secrets.py): with ``TAGGER_TEST_SECRETS``
set (comma-separated), every output a test sees fails it when it holds one of them: what each `tagger`
command printed (run_cli, in-process or not), what any subprocess wrote to a pipe it read
(``communicate``), and every file the test left in its ``tmp_path`` (worker and beat logs).

Loaded with ``-p tests.support.secrets`` by the secrets test's inner pytest run, which points the test
services at URLs with passwords (``TAGGER_TEST_PG``, ``TAGGER_TEST_REDIS``): the whole bad-input suite
then runs with passwords in both URLs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

SECRETS = [s for s in os.environ.get("TAGGER_TEST_SECRETS", "").split(",") if s]


def find_secret(text: str | bytes | None) -> str | None:
    if not text:
        return None
    data = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return next((secret for secret in SECRETS if secret in data), None)


def assert_no_secret(text: str | bytes | None, where: str) -> None:
    secret = find_secret(text)
    assert secret is None, f"a password ({secret[:2]}...) is shown by {where}"


def pytest_configure(config: pytest.Config) -> None:
    if not SECRETS:
        return
    # Before the test modules are imported: they take run_cli by name.
    from tests.support import processes

    run_cli = processes.run_cli

    def checked_run_cli(env: dict[str, str], *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        result = run_cli(env, *args, **kwargs)
        assert_no_secret(result.stdout, f"`tagger {' '.join(args)}` (stdout)")
        assert_no_secret(result.stderr, f"`tagger {' '.join(args)}` (stderr)")
        return result

    processes.run_cli = checked_run_cli  # type: ignore[assignment]
    communicate = subprocess.Popen.communicate

    def checked_communicate(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> Any:
        out, err = communicate(self, *args, **kwargs)
        assert_no_secret(out, f"{self.args!r} (stdout)")
        assert_no_secret(err, f"{self.args!r} (stderr)")
        return out, err

    subprocess.Popen.communicate = checked_communicate  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    result = yield
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if SECRETS and isinstance(tmp_path, Path):
        for path in tmp_path.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert_no_secret(path.read_bytes(), f"the file {path.name} of the test")
    return result
