"""`tagger flower` (basic auth or local only) and `tagger metrics` (our gauges, queried on scrape)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench import free_port
from db.dead_letters import DeadLetter, record_dead_letters
from db.engine import transaction
from db.jobs import mark_done, mark_queued, schedule_retries
from db.repos import upsert_repos
from db.results import upsert_results
from tests.support.http import NOT_ANSWERING, http_get
from tests.support.processes import run_cli, tagger_process, wait_until
from workers.contract import TAG_BATCH, create_app


def serving(env: dict[str, str], log: Path, *args: str):  # type: ignore[no-untyped-def]
    return tagger_process(env, *args, log=log)


def answering(url: str, proc: subprocess.Popen[bytes], auth: tuple[str, str] | None = None) -> tuple[int, str] | None:
    assert proc.poll() is None, f"the server exited with {proc.returncode}"
    answer = http_get(url, auth)
    return None if answer == NOT_ANSWERING else answer


@pytest.fixture
def no_flower_credentials(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(("TAGGER_FLOWER_", "FLOWER_"))}


def test_flower_refuses_to_start_without_credentials(no_flower_credentials):
    result = run_cli(no_flower_credentials, "flower", "--port", str(free_port()), check=False, timeout=60)
    assert result.returncode == 2
    assert "refusing to start Flower without credentials" in result.stderr
    assert "TAGGER_FLOWER_USER" in result.stderr and "--local-only" in result.stderr

    half = {**no_flower_credentials, "TAGGER_FLOWER_USER": "ops"}  # a user without a password is no better
    assert run_cli(half, "flower", check=False, timeout=60).returncode == 2

    wide = run_cli(no_flower_credentials, "flower", "--local-only", "--address", "0.0.0.0", check=False, timeout=60)
    assert wide.returncode == 2 and "127.0.0.1 only" in wide.stderr


def test_flower_requires_basic_auth_and_keeps_the_password_off_its_command_line(env, tmp_path):
    port, auth = free_port(), ("ops", "correct-horse")
    env = {**env, "TAGGER_FLOWER_USER": auth[0], "TAGGER_FLOWER_PASSWORD": auth[1]}
    with serving(env, tmp_path / "flower.log", "flower", "--port", str(port)) as proc:
        base = f"http://127.0.0.1:{port}"
        status, _ = wait_until(lambda: answering(f"{base}/", proc), timeout=60, what="flower to answer")
        assert status == 401
        assert http_get(f"{base}/", ("ops", "wrong"))[0] == 401
        assert http_get(f"{base}/", auth)[0] == 200
        status, text = http_get(f"{base}/metrics", auth)
        assert status == 200 and "flower_" in text
        with open(f"/proc/{proc.pid}/cmdline", "rb") as cmdline:
            assert auth[1].encode() not in cmdline.read()


def test_flower_local_only_runs_without_credentials_on_loopback(no_flower_credentials, tmp_path):
    port = free_port()
    with serving(no_flower_credentials, tmp_path / "flower.log", "flower", "--local-only", "--port", str(port)) as proc:
        status, _ = wait_until(lambda: answering(f"http://127.0.0.1:{port}/", proc), timeout=60,
                               what="flower to answer")
        assert status == 200


def _scrape(port: int, proc: subprocess.Popen[bytes]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = wait_until(lambda: answering(f"http://127.0.0.1:{port}/metrics", proc), timeout=60,
                        what="the metrics endpoint")
    status, text = answer
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_endpoint_serves_our_gauges_queried_on_scrape(settings, env, tmp_path):
    ids = [f"m{n}" for n in range(10)]
    with transaction(settings.database_url) as conn:
        upsert_repos(conn, [{"id": i, "readme": f"# {i}\nA Rust CLI."} for i in ids])
        upsert_results(conn, [{"repo_id": i, "tag_ids": [4], "backend": "keyword", "model": "keyword-v1",
                               "prompt_version": "p", "taxonomy_version": 1, "readme_hash": "h", "readme_version": 1,
                               "raw_output": "{}", "latency_ms": 1.0} for i in ids[:4]])
        mark_done(conn, ids[:4], "t")
        mark_queued(conn, ids[4:7])
        schedule_retries(conn, [(ids[6], 1, 30.0, "BackendTimeout: slow")], "t")
        record_dead_letters(conn, [DeadLetter(r, "UnusableReadme", "empty", 1)
                                   for r in (ids[7], "not-in-the-index")], "t")
    sender = create_app(settings)
    for n in range(3):
        sender.send_task(TAG_BATCH, ([f"x{n}"],), queue=settings.queue)

    port = free_port()
    with serving(env, tmp_path / "metrics.log", "metrics", "--port", str(port)) as proc:
        m = _scrape(port, proc)
        states = {"queued": 2, "done": 4, "failed": 1, "dead": 1, "untracked": 2}
        for state, n in states.items():
            assert m[("tagger_repos", (("state", state),))] == n, state
        assert m[("tagger_queue_depth", (("queue", settings.queue),))] == 3
        assert m[("tagger_queue_depth", (("queue", f"{settings.queue}.maintenance"),))] == 0
        assert m[("tagger_queue_high_water", ())] == settings.queue_high_water
        assert m[("tagger_workers_online", ())] == 0
        assert m[("tagger_database_up", ())] == 1 and m[("tagger_broker_up", ())] == 1
        # Rates are PromQL's; the repeats of tagger_repos{state} are gone.
        names = {name for name, _labels in m}
        assert not names & {"tagger_tag_rate_per_second", "tagger_repos_tagged", "tagger_dead_letters"}

        # Every scrape asks again.
        with transaction(settings.database_url) as conn:
            mark_done(conn, ids[4:6], "t")
        sender.send_task(TAG_BATCH, (["x9"],), queue=settings.queue)
        m = _scrape(port, proc)
        assert m[("tagger_repos", (("state", "queued"),))] == 0
        assert m[("tagger_repos", (("state", "done"),))] == 6
        assert m[("tagger_queue_depth", (("queue", settings.queue),))] == 4


def test_metrics_report_a_database_that_is_down(env, tmp_path):
    env = {**env, "TAGGER_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"}
    port = free_port()
    with serving(env, tmp_path / "metrics.log", "metrics", "--port", str(port)) as proc:
        m = _scrape(port, proc)
        assert m[("tagger_database_up", ())] == 0
        assert m[("tagger_broker_up", ())] == 1
        code, body = http_get(f"http://127.0.0.1:{port}/healthz")
        assert code == 503 and json.loads(body) == {"healthy": False, "database": False, "broker": True}
