"""`tagger demo`: the whole flow with no services, on the READMEs shipped in the package.

Run as the process a user runs: its Celery worker lives in a thread, with Celery's process-wide state."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from tagger.samples import sample_rows
from tagger.taxonomy import Taxonomy
from tests.support.processes import run_cli

TAXONOMY = Taxonomy.load()


@pytest.fixture
def no_services_env() -> dict[str, str]:
    """Services that do not exist: the demo must not need any."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGER_")}
    env.update({
        "TAGGER_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none",
        "TAGGER_BROKER_URL": "redis://127.0.0.1:1/0",
        "TAGGER_LOG_FORMAT": "json",
    })
    return env


def _check_output(stdout: str) -> list[dict]:
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    samples = sample_rows()
    assert [line["id"] for line in lines] == sorted(r["id"] for r in samples)
    assert "7462" in {line["id"] for line in lines}
    for line in lines:
        assert set(line) == {"id", "tags"} and len(line["tags"]) <= 3
        for tag in line["tags"]:
            assert set(tag) == {"id", "name"} and TAXONOMY.by_id(tag["id"]).name == tag["name"]
    # The summary table: a row per repo, then the totals.
    for row in samples:
        assert any(text.startswith(row["id"]) and row["name"] in text for text in stdout.splitlines())
    assert f"{len(samples)} repos: {len(samples)} tagged, 0 dead letters" in stdout
    return lines


def test_samples_include_the_users_example():
    rows = sample_rows()
    assert len(rows) == 8 and {"id": "7462", "name": "OpenBMB/MiniCPM"}.items() <= next(
        r for r in rows if r["id"] == "7462").items()


def test_demo_with_the_keyword_backend(no_services_env, tmp_path):
    db = tmp_path / "demo.sqlite"
    result = run_cli(no_services_env, "demo", "--backend", "keyword", "--db", str(db), timeout=180, in_process=False)
    lines = _check_output(result.stdout)
    assert sum(1 for line in lines if line["tags"]) >= 6
    with sqlite3.connect(db) as conn:  # migrated by Alembic, results and job states stored
        assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == len(lines)
        assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0] == len(lines)
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]

    # Run again on the same file: nothing is stale, nothing is re-tagged, the same JSON is printed.
    again = run_cli(no_services_env, "demo", "--backend", "keyword", "--db", str(db), timeout=180, in_process=False)
    assert "already tagged" in again.stderr
    assert _check_output(again.stdout) == lines


@pytest.mark.timeout(300)  # MiniLM loads in seconds; two shared cores under other tests' load
def test_demo_with_the_default_backend(no_services_env, tmp_path):
    pytest.importorskip("sentence_transformers")
    db = tmp_path / "demo.sqlite"
    result = run_cli(no_services_env, "demo", "--db", str(db), timeout=280, in_process=False)
    lines = _check_output(result.stdout)
    assert all(line["tags"] for line in lines)  # scoring always keeps the best tag
    assert "backend signals, model all-MiniLM-L6-v2" in result.stdout
    # Our user's own example: MiniCPM, a family of LLMs (its README is mostly Chinese).
    assert "ai" in {tag["name"] for line in lines if line["id"] == "7462" for tag in line["tags"]}

    # Each tag's confidence is stored: exported on request, and the least confident listed for review.
    env = {**no_services_env, "TAGGER_DATABASE_URL": f"sqlite:///{db}"}
    exported = [json.loads(line) for line in run_cli(env, "export", "--with-scores").stdout.splitlines()]
    assert [{"id": e["id"], "tags": [{"id": t["id"], "name": t["name"]} for t in e["tags"]]} for e in exported] == lines
    for entry in exported:
        scores = [t["score"] for t in entry["tags"]]
        assert all(0 < s < 1 for s in scores) and scores == sorted(scores, reverse=True)
    review = [json.loads(line) for line in run_cli(env, "review", "--limit", "3", "--json").stdout.splitlines()]
    confidences = sorted(e["tags"][0]["score"] for e in exported)
    assert [r["confidence"] for r in review] == confidences[:3]
