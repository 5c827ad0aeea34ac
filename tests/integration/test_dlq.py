"""`tagger dlq`: list (--json), show, requeue, purge --before, on a real database and Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from db.dead_letters import DeadLetter, record_dead_letters
from db.engine import transaction
from db.models import dead_letters, jobs
from db.repos import upsert_repos
from tagger.backends.keyword import KeywordTagger
from tests.support.data import READMES
from tests.support.processes import run_cli
from workers.batch import process_batch
from workers.contract import queue_depth
from workers.runtime import Runtime

GOOD = (READMES / "1001.md").read_text(encoding="utf-8")
FIELDS = {"repo_id", "error_class", "message", "attempts", "first_failed_at", "last_failed_at", "task_id"}


def seed(settings, ids=("r1", "r2", "r3")) -> None:
    with transaction(settings.database_url) as conn:
        upsert_repos(conn, [{"id": i, "name": "", "readme": GOOD} for i in ids])
        letters = [DeadLetter(i, "BackendTimeout", f"timed out on {i}\nagain", 5) for i in ids]
        record_dead_letters(conn, letters, "task-9")


def dead_ids(settings) -> set[str]:
    with transaction(settings.database_url) as conn:
        return set(conn.execute(sa.select(dead_letters.c.repo_id)).scalars())


def test_list_json_and_text(settings, env):
    assert run_cli(env, "dlq", "list").stdout.strip() == "no dead letters"
    assert json.loads(run_cli(env, "dlq", "list", "--json").stdout) == []
    seed(settings)
    rows = json.loads(run_cli(env, "dlq", "list", "--json").stdout)
    assert isinstance(rows, list) and {r["repo_id"] for r in rows} == {"r1", "r2", "r3"}
    for row in rows:
        assert set(row) == FIELDS
        assert (row["error_class"], row["attempts"], row["task_id"]) == ("BackendTimeout", 5, "task-9")
        datetime.fromisoformat(row["first_failed_at"])
    assert len(json.loads(run_cli(env, "dlq", "list", "--json", "--limit", "2").stdout)) == 2
    text = run_cli(env, "dlq", "list").stdout.splitlines()
    assert len(text) == 3 and all("BackendTimeout" in line and "attempts=5" in line for line in text)


def test_show(settings, env):
    seed(settings)
    shown = json.loads(run_cli(env, "dlq", "show", "r2").stdout)
    assert shown["repo_id"] == "r2" and shown["message"] == "timed out on r2\nagain" and set(shown) == FIELDS
    missing = run_cli(env, "dlq", "show", "nope", check=False)
    assert missing.returncode == 2 and "error: no dead letter for repo 'nope'" in missing.stderr


def test_requeue_ids_sends_them_and_success_removes_the_dead_letter(settings, env):
    seed(settings)
    result = run_cli(env, "dlq", "requeue", "r1", "r3")
    assert "requeued 2 repos" in result.stdout
    assert queue_depth(settings.broker_url, settings.queue) == 1
    with transaction(settings.database_url) as conn:
        states = dict(conn.execute(sa.select(jobs.c.repo_id, jobs.c.state)).all())
        attempts = dict(conn.execute(sa.select(jobs.c.repo_id, jobs.c.attempts)).all())
    assert (states["r1"], states["r2"], states["r3"]) == ("queued", "dead", "queued")
    assert attempts["r1"] == 0  # a fresh set of attempts
    assert dead_ids(settings) == {"r1", "r2", "r3"}  # listed until tagged successfully
    outcome = process_batch(Runtime.start(settings, tagger=KeywordTagger()), ["r1", "r3"], "t")
    assert outcome.tagged == ["r1", "r3"]
    assert dead_ids(settings) == {"r2"}


def test_requeue_all_and_refusals(settings, env):
    seed(settings)
    assert "requeued 3 repos" in run_cli(env, "dlq", "requeue", "--all").stdout
    unknown = run_cli(env, "dlq", "requeue", "r1", "nope", check=False)
    assert unknown.returncode == 2 and "not in the dead-letter list: 'nope'" in unknown.stderr
    for args in ((), ("--all", "r1")):
        usage = run_cli(env, "dlq", "requeue", *args, check=False)
        assert usage.returncode == 2 and "give repo ids or --all" in usage.stderr


def test_purge_before(settings, env):
    seed(settings)
    old = datetime.now(UTC) - timedelta(days=10)
    with transaction(settings.database_url) as conn:
        conn.execute(sa.update(dead_letters).where(dead_letters.c.repo_id.in_(["r1", "r2"]))
                     .values(last_failed_at=old))
    cutoff = (datetime.now(UTC) - timedelta(days=5)).strftime("%Y-%m-%d")
    assert "purged 2 dead letters" in run_cli(env, "dlq", "purge", "--before", cutoff).stdout
    assert dead_ids(settings) == {"r3"}
    missing = run_cli(env, "dlq", "purge", check=False)
    assert missing.returncode == 2 and "--before" in missing.stderr
