"""Progress as an operator reads it: runs keep true counts after later runs, show their state; status
has a rate and ETA from the run's own pace; `status --watch` ends with the runs; review has a header."""

from __future__ import annotations

import json

from db.engine import transaction
from db.results import upsert_results
from tests.support.data import readme_fixture_rows, write_jsonl
from tests.support.processes import run_cli, status, tagger_process, wait_until, worker_process


def runs(env: dict[str, str]) -> dict[int, dict]:
    return {r["id"]: r for r in map(json.loads, run_cli(env, "runs", "--json").stdout.splitlines())}


def test_runs_keep_true_counts_and_state_after_later_runs(env, tmp_path):
    run_cli(env, "import", str(write_jsonl(tmp_path / "repos.jsonl", readme_fixture_rows())))
    with worker_process(env, log=tmp_path / "worker.log"):
        run_cli(env, "enqueue", "--all", "--batch-size", "8")
        wait_until(lambda: runs(env)[1]["state"] == "done", timeout=120, what="run 1 done")
        first = status(env)
        assert first["rate_per_s"] > 0 and first["eta_s"] == 0
        assert first["runs"][0]["state"] == "done" and first["runs"][0]["tagged"] == 20
        run_cli(env, "enqueue", "--all", "--batch-size", "8", "--label", "again")
        wait_until(lambda: runs(env)[2]["state"] == "done", timeout=120, what="run 2 done")
    listed = runs(env)
    # Run 2 replaced every result of run 1: run 1 still tagged 20 (once "done 0").
    assert (listed[1]["counts"]["tagged"], listed[1]["state"]) == (20, "done")
    assert (listed[2]["counts"]["tagged"], listed[2]["state"]) == (20, "done")
    table = run_cli(env, "runs").stdout.splitlines()
    assert table[0].split()[-5:] == ["sent", "tagged", "pending", "dead", "state"]

    run_cli(env, "rollback", "2")
    assert runs(env)[2]["state"] == "rolled back"
    shown = json.loads(run_cli(env, "status", "--run", "1", "--json").stdout)
    assert shown["state"] == "done" and shown["counts"]["tagged"] == 20 and shown["rate_per_s"] > 0

    # Every run is done: the watch draws its bar once and ends.
    watched = run_cli(env, "status", "--watch", "--run", "1", timeout=60)
    assert "run 1: done, 20 of 20 tagged, 0 dead" in watched.stdout


def test_a_run_is_sending_while_its_producer_waits_on_a_full_queue(env, tmp_path):
    run_cli(env, "import", str(write_jsonl(tmp_path / "repos.jsonl", readme_fixture_rows())))
    full = {**env, "TAGGER_QUEUE_HIGH_WATER": "1"}
    with tagger_process(full, "enqueue", "--all", "--batch-size", "5", log=tmp_path / "enqueue.log") as producer:
        wait_until(lambda: runs(env).get(1, {}).get("state") == "sending", timeout=60, what="run 1 sending")
        with worker_process(env, log=tmp_path / "worker.log"):
            assert producer.wait(timeout=120) == 0
            wait_until(lambda: runs(env)[1]["state"] == "done", timeout=120, what="run 1 done")
    assert runs(env)[1]["counts"]["tagged"] == 20


def test_review_prints_a_header(env, settings, tmp_path):
    run_cli(env, "import", str(write_jsonl(tmp_path / "repos.jsonl", readme_fixture_rows()[:3])))
    assert "no scored results yet" in run_cli(env, "review").stderr
    ids = [row["id"] for row in readme_fixture_rows()[:3]]
    with transaction(settings.database_url) as conn:
        upsert_results(conn, [{"repo_id": i, "tag_ids": [4], "backend": "signals", "model": "m", "prompt_version": "p",
                               "taxonomy_version": 1, "readme_hash": "h", "readme_version": 1, "raw_output": "{}",
                               "latency_ms": 1.0, "tag_scores": [0.5 + n / 10], "confidence": 0.5 + n / 10,
                               "run_id": None} for n, i in enumerate(ids)])
    lines = run_cli(env, "review").stdout.splitlines()
    assert lines[0].split()[:3] == ["confidence", "id", "name"]
    assert len(lines) == 4 and lines[1].startswith("0.500")
