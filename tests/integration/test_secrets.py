"""No password of TAGGER_DATABASE_URL or TAGGER_BROKER_URL is ever shown: not in an error, a warning, a
log line, `status`, `runs`, the metrics, nor a --debug traceback; services up or down, settings good or
bad. (tagger/urls.py masks them; the CLI's error handler and the log renderer scrub what drivers say.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa

from bench import free_port, stop
from db.engine import get_engine
from tagger.urls import masked
from tests.support.data import READMES, write_jsonl
from tests.support.processes import run_cli, tagger_process, wait_until
from tests.support.services import PG_ADMIN_URL

DB_SECRET = f"dbpw-{uuid.uuid4().hex[:12]}"
BROKER_SECRET = f"brokerpw-{uuid.uuid4().hex[:12]}"
GOOD = (READMES / "1001.md").read_text(encoding="utf-8")


def with_password(url: str, password: str) -> str:
    return str(sa.engine.make_url(url).set(password=password).render_as_string(hide_password=False))


def assert_no_secret(*outputs: str | bytes) -> None:
    for output in outputs:
        text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
        assert DB_SECRET not in text and BROKER_SECRET not in text, text[-3000:]


@pytest.fixture
def secret_env(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The test's database with a password (PostgreSQL's trust authentication ignores it); a broker with a
    password where nothing listens."""
    url = with_password(env["TAGGER_DATABASE_URL"], DB_SECRET)
    yield {**env, "TAGGER_DATABASE_URL": url, "TAGGER_BROKER_URL": f"redis://:{BROKER_SECRET}@127.0.0.1:{free_port()}/0"}
    get_engine(url).dispose()  # the in-process commands' pool (the fixture disposes only its own URL's)


def test_masked_keeps_everything_but_the_password():
    assert masked("redis://:s3cr@t@host:6379/0") == "redis://:***@host:6379/0"
    assert masked("postgresql+psycopg://me:pw/x@db:abc/tagger") == "postgresql+psycopg://me:***@db:abc/tagger"
    assert masked("postgresql://me@db/tagger?password=zz&sslmode=require") == \
        "postgresql://me@db/tagger?password=***&sslmode=require"
    assert masked("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert masked("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"


@pytest.mark.parametrize("args", [
    ("enqueue", "--all"), ("enqueue", "--ids", "a"), ("canary", "--sample", "1"), ("status",), ("status", "--json"),
    ("--debug", "enqueue", "--all"), ("--debug", "canary", "--sample", "1"), ("sweep", "--canary", "CANARY"),
    ("runs",), ("dlq", "requeue", "--all"),
], ids=lambda a: "-".join(a))
def test_broker_down_with_a_password(settings, env, secret_env, args, tmp_path):
    run_cli(env, "import", str(write_jsonl(tmp_path / "repos.jsonl", [{"id": "a", "readme": GOOD}])))
    if "CANARY" in args:
        canary = run_cli(env, "canary", "--sample", "1").stdout.split()[2].rstrip(":")
        args = tuple(canary if a == "CANARY" else a for a in args)
        args = (*args, "--older-than", "0")
    for in_process in (True, False):
        result = run_cli(secret_env, *args, check=False, in_process=in_process)
        assert_no_secret(result.stdout, result.stderr)
        if args[-1] != "--json" and args[0] not in ("status", "runs", "dlq"):
            assert result.returncode == 1 and "BrokerUnavailable" in result.stderr, result.stderr
            assert "redis://:***@127.0.0.1:" in result.stderr


@pytest.mark.parametrize("args", [("status",), ("--debug", "status"), ("export",), ("enqueue", "--all"),
                                  ("worker",), ("db", "upgrade")], ids=lambda a: "-".join(a))
def test_database_down_with_a_password(secret_env, args):
    down = {**secret_env, "TAGGER_DATABASE_URL": f"postgresql+psycopg://postgres:{DB_SECRET}@127.0.0.1:{free_port()}/x"}
    result = run_cli(down, *args, check=False, in_process=False, timeout=120, stdin="")
    assert result.returncode != 0
    assert "DatabaseUnavailable" in result.stderr or "database unavailable" in result.stderr, result.stderr
    assert_no_secret(result.stdout, result.stderr)


@pytest.mark.parametrize(("variable", "value"), [
    ("TAGGER_DATABASE_URL", f"postgresql+psycopg://postgres:{DB_SECRET}@127.0.0.1:notaport/tagger"),
    ("TAGGER_DATABASE_URL", f"mysql://root:{DB_SECRET}@127.0.0.1/tagger"),
    ("TAGGER_DATABASE_URL", f"postgres:{DB_SECRET}@127.0.0.1/tagger"),
    ("TAGGER_BROKER_URL", f"redis://:{BROKER_SECRET}@127.0.0.1:notaport/0"),
    ("TAGGER_BROKER_URL", f"redis://:{BROKER_SECRET}@127.0.0.1:6379/abc"),
    ("TAGGER_BROKER_URL", f"http://:{BROKER_SECRET}@127.0.0.1:6379/0"),
], ids=["db-port", "db-mysql", "db-no-scheme", "broker-port", "broker-db", "broker-scheme"])
def test_invalid_urls_with_a_password_are_settings_errors_that_do_not_show_it(secret_env, variable, value):
    for args in (("status",), ("--debug", "status"), ("worker",)):
        result = run_cli({**secret_env, variable: value}, *args, check=False, in_process=False)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 or args[0] == "--debug", result.stderr  # --debug: the traceback above it
        assert lines[-1].startswith(f"error: invalid setting: {variable}: "), result.stderr
        assert_no_secret(result.stdout, result.stderr)


def test_metrics_with_the_broker_down_log_no_password(settings, secret_env, tmp_path):
    port = free_port()
    log = tmp_path / "metrics.log"
    with tagger_process(secret_env, "metrics", "--port", str(port), log=log):
        import urllib.request

        def scraped() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    return str(response.read().decode())
            except OSError:
                return None

        body = wait_until(scraped, timeout=60, what="the metrics endpoint")
        wait_until(lambda: "metrics_broker_unavailable" in log.read_text(), timeout=30, what="the warning logged")
    assert "tagger_broker_up 0.0" in body
    assert_no_secret(body, log.read_bytes())
    assert "redis://:***@127.0.0.1:" in log.read_text()


@pytest.fixture
def redis_with_password() -> Iterator[str]:
    """A redis-server of our own that requires a password: the bad-input suite's broker."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--requirepass", BROKER_SECRET], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"redis://:{BROKER_SECRET}@127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        wait_until(lambda: _pings(client), timeout=20, what="redis-server up")
        client.close()
        yield url
    finally:
        stop(proc)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        time.sleep(0.05)
        return False


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a whole test module in a pytest of its own
def test_the_bad_input_suite_with_passwords_in_both_urls_shows_neither(redis_with_password, repo_root, tmp_path):
    """Every error path of tests/integration/test_bad_input.py, run with passwords in both URLs: the
    plugin tests.support.secrets fails any test that sees one in an output, a log or a file."""
    env = {**os.environ, "TAGGER_TEST_PG": with_password(PG_ADMIN_URL, DB_SECRET),
           "TAGGER_TEST_REDIS": redis_with_password, "TAGGER_TEST_SECRETS": f"{DB_SECRET},{BROKER_SECRET}"}
    env = {k: v for k, v in env.items() if k not in ("PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.support.secrets", "-q", "-x", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "inner"), "tests/integration/test_bad_input.py"],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
    assert_no_secret(result.stdout, result.stderr)
