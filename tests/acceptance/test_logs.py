"""Worker logs: JSON lines off a terminal, with the task's and each repo's context, stable event names."""

from __future__ import annotations

import json
import re

from tests.support.data import readme_fixture_rows, write_jsonl
from tests.support.logs import log_events
from tests.support.processes import run_cli, status, wait_until, worker_process

TASK_FIELDS = {"task_id", "batch_size", "backend", "model"}


def test_worker_logs_json_lines_with_task_and_repo_context(env, tmp_path):
    env = {**env, "TAGGER_LOG_LEVEL": "DEBUG", "TAGGER_LOG_FORMAT": "auto"}  # auto: stderr is a file → JSON
    rows = readme_fixture_rows()
    run_cli(env, "import", str(write_jsonl(tmp_path / "repos.jsonl", rows)))
    log = tmp_path / "worker.log"
    with worker_process(env, log=log):
        run_cli(env, "enqueue", "--all", "--batch-size", "8")
        wait_until(lambda: status(env)["tagged"] == len(rows), timeout=90, interval=0.2, what="all repos tagged")
        wait_until(lambda: sum(e.get("tagged", 0) for e in log_events(log, "batch_tagged")) == len(rows), timeout=30,
                   what="the last batch_tagged line")

    batches = log_events(log, "batch_tagged")
    assert len(batches) == 3
    for line in batches:
        assert set(line) >= TASK_FIELDS, line
        assert line["backend"] == "keyword" and line["model"] == "keyword-v1" and line["level"] == "info"
        assert line["tagged"] == line["batch_size"]
    assert sorted(b["batch_size"] for b in batches) == [4, 8, 8]

    repos = log_events(log, "repo_tagged")
    assert sorted(line["repo_id"] for line in repos) == sorted(r["id"] for r in rows)
    task_ids = {b["task_id"] for b in batches}
    for line in repos:
        assert TASK_FIELDS | {"repo_id", "latency_ms", "tags"} <= set(line), line
        assert line["task_id"] in task_ids
        assert isinstance(line["tags"], list) and isinstance(line["latency_ms"], (int, float))
    assert log_events(log, "worker_model_loaded")

    # Whoever wrote a log line (us, Celery, kombu), it is one JSON object; only Celery's start-up
    # banner, which it prints to stdout, is not a log line.
    for line in log.read_text(encoding="utf-8").splitlines():
        if line.startswith(("{", " ")) or not line.strip():
            if line.startswith("{"):
                json.loads(line)
            continue
        assert not re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL)[ :]|\[\d{4}-", line), line


def test_lines_from_several_threads_and_libraries_never_interleave(tmp_path):
    """The threads pool logs from several threads at once, ours through structlog and Celery's through
    logging: every line must still be one whole JSON object."""
    import subprocess
    import sys

    script = """
import logging, threading
import structlog
from tagger.logs import configure_logging
configure_logging("INFO", "json")
ours, theirs = structlog.get_logger("tagger.worker"), logging.getLogger("celery.app.trace")
def log_ours(n):
    for i in range(2000):
        ours.warning("dead_lettered", repo_id=f"r{n}-{i}", message="x" * 200)
def log_theirs():
    for i in range(2000):
        theirs.warning("Task tagger.tag_batch[%s] succeeded", i)
threads = [threading.Thread(target=log_ours, args=(n,)) for n in range(2)] + [threading.Thread(target=log_theirs)]
[t.start() for t in threads]
[t.join() for t in threads]
"""
    out = tmp_path / "log.jsonl"
    with open(out, "wb") as stderr:
        subprocess.run([sys.executable, "-c", script], stderr=stderr, check=True, timeout=120)
    lines = out.read_text(encoding="utf-8").splitlines()
    parsed = [json.loads(line) for line in lines]  # raises on any torn or joined line
    assert len(parsed) == 6000
    assert sum(1 for p in parsed if p["event"] == "dead_lettered") == 4000
