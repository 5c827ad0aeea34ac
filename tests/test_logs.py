"""Worker logs: JSON lines off a terminal, with the task's and each repo's context, stable event names."""

from __future__ import annotations

import json
import re

from tests.helpers import readme_fixture_rows, run_cli, status, wait_until, worker_process, write_jsonl
from tests.ops_helpers import events

TASK_FIELDS = {"task_id", "batch_size", "backend", "model"}


def test_worker_logs_json_lines_with_task_and_repo_context(env, tmp_path):
    env = {**env, "TAGGER_LOG_LEVEL": "DEBUG", "TAGGER_LOG_FORMAT": "auto"}  # auto: stderr is a file → JSON
    rows = readme_fixture_rows()
    run_cli(env, "import", str(write_jsonl(tmp_path / "repos.jsonl", rows)))
    log = tmp_path / "worker.log"
    with worker_process(env, log=log):
        run_cli(env, "enqueue", "--all", "--batch-size", "8")
        wait_until(lambda: status(env)["tagged"] == len(rows), timeout=90, interval=0.2, what="all repos tagged")
        wait_until(lambda: sum(e.get("tagged", 0) for e in events(log, "batch_tagged")) == len(rows), timeout=30,
                   what="the last batch_tagged line")

    batches = events(log, "batch_tagged")
    assert len(batches) == 3
    for line in batches:
        assert set(line) >= TASK_FIELDS, line
        assert line["backend"] == "keyword" and line["model"] == "keyword-v1" and line["level"] == "info"
        assert line["tagged"] == line["batch_size"]
    assert sorted(b["batch_size"] for b in batches) == [4, 8, 8]

    repos = events(log, "repo_tagged")
    assert sorted(line["repo_id"] for line in repos) == sorted(r["id"] for r in rows)
    task_ids = {b["task_id"] for b in batches}
    for line in repos:
        assert TASK_FIELDS | {"repo_id", "latency_ms", "tags"} <= set(line), line
        assert line["task_id"] in task_ids
        assert isinstance(line["tags"], list) and isinstance(line["latency_ms"], (int, float))
    assert events(log, "worker_model_loaded")

    # Whoever wrote a log line (us, Celery, kombu), it is one JSON object; only Celery's start-up
    # banner, which it prints to stdout, is not a log line.
    for line in log.read_text(encoding="utf-8").splitlines():
        if line.startswith(("{", " ")) or not line.strip():
            if line.startswith("{"):
                json.loads(line)
            continue
        assert not re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL)[ :]|\[\d{4}-", line), line
