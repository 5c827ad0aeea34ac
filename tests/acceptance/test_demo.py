"""`tagger demo`: the production system, small, on the READMEs shipped in the package.

Run as the process a user runs. With no TAGGER_* settings it starts its own PostgreSQL and Redis
(tagger/servers.py) and `tagger worker` subprocesses, and leaves nothing behind: no server, no worker,
no folder, also when it is interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tagger.samples import sample_rows
from tagger.taxonomy import Taxonomy
from tests.support.processes import TAGGER, default_signals, run_cli, status

TAXONOMY = Taxonomy.load()
PORT = re.compile(r"127\.0\.0\.1:(\d+)")


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """No TAGGER_* setting at all, and a temporary folder of its own (to see what is left in it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGER_")}
    (tmp_path / "tmp").mkdir()
    env.update({"TMPDIR": str(tmp_path / "tmp"), "TAGGER_LOG_FORMAT": "json"})
    return env


def _check_output(stdout: str) -> list[dict]:
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    samples = sample_rows()
    assert [line["id"] for line in lines] == sorted(r["id"] for r in samples)
    for line in lines:
        assert set(line) == {"id", "tags"} and len(line["tags"]) <= 3
        for tag in line["tags"]:
            assert set(tag) == {"id", "name"} and TAXONOMY.by_id(tag["id"]).name == tag["name"]
    # The summary table: a row per repo, then the totals.
    for row in samples:
        assert any(text.startswith(row["id"]) and row["name"] in text for text in stdout.splitlines())
    assert f"{len(samples)} repos: {len(samples)} tagged, 0 dead letters" in stdout
    return lines


def _servers_named_first(stdout: str) -> list[int]:
    """The first two lines name the embedded PostgreSQL and Redis; their ports."""
    first, second = stdout.splitlines()[:2]
    assert first.startswith("database PostgreSQL: postgresql+psycopg://postgres@127.0.0.1:") and "embedded" in first
    assert second.startswith("broker Redis: redis://127.0.0.1:") and "embedded" in second
    return [int(PORT.search(line).group(1)) for line in (first, second)]  # type: ignore[union-attr]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _processes_using(path: Path) -> list[str]:
    """Processes whose command line or environment names ``path`` (servers, workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            text = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(path).encode() in text:
            found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return found


def _left_behind(env: dict[str, str], ports: list[int]) -> tuple[list[str], list[str], list[int]]:
    tmp = Path(env["TMPDIR"])
    return sorted(p.name for p in tmp.iterdir()), _processes_using(tmp), [p for p in ports if _listening(p)]


def test_samples_include_the_users_example():
    rows = sample_rows()
    assert len(rows) == 8 and {"id": "7462", "name": "OpenBMB/MiniCPM"}.items() <= next(
        r for r in rows if r["id"] == "7462").items()


def test_demo_in_an_empty_folder_with_no_settings(bare_env, tmp_path):
    """Its own PostgreSQL and Redis, named first, a real worker through Celery; nothing left after."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([*TAGGER, "demo", "--backend", "keyword"], env=bare_env, cwd=empty, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    ports = _servers_named_first(result.stdout)
    lines = _check_output(result.stdout)
    assert sum(1 for line in lines if line["tags"]) >= 6
    assert _left_behind(bare_env, ports) == ([], [], [])
    assert list(empty.iterdir()) == []


def test_demo_keeps_its_data_dir_when_asked(bare_env, tmp_path):
    data = tmp_path / "demo-data"
    first = run_cli(bare_env, "demo", "--backend", "keyword", "--data-dir", str(data), timeout=240, in_process=False)
    lines = _check_output(first.stdout)
    assert (data / "pg" / "PG_VERSION").is_file()
    # Run again on the same folder: nothing is stale, nothing is re-tagged, the same JSON is printed.
    again = run_cli(bare_env, "demo", "--backend", "keyword", "--data-dir", str(data), timeout=240, in_process=False)
    assert "already tagged" in again.stderr
    assert _check_output(again.stdout) == lines
    assert _left_behind(bare_env, _servers_named_first(again.stdout)) == ([], [], [])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_demo_leaves_no_server_worker_or_folder(bare_env, sig):
    proc = subprocess.Popen([*TAGGER, "demo", "--backend", "keyword"], env=bare_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=default_signals)
    try:
        head = [proc.stdout.readline(), proc.stdout.readline()]  # type: ignore[union-attr]
        ports = _servers_named_first("".join(head))
        # Interrupted while its worker starts (or works): servers, worker and folder all in use.
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "aborted" in err
    assert _left_behind(bare_env, ports) == ([], [], [])


def test_demo_on_servers_of_yours(env, settings):
    """TAGGER_DATABASE_URL and TAGGER_BROKER_URL set: the demo runs on those, as every command does."""
    result = run_cli(env, "demo", "--backend", "keyword", timeout=240, in_process=False)
    first, second = result.stdout.splitlines()[:2]
    assert first.startswith("database PostgreSQL: ") and "(yours" in first
    assert second.startswith("broker Redis: ") and "(yours" in second
    lines = _check_output(result.stdout)
    assert status(env)["tagged"] == len(lines)
    exported = [json.loads(line) for line in run_cli(env, "export").stdout.splitlines()]
    assert exported == lines


@pytest.mark.timeout(300)  # MiniLM loads in seconds; two shared cores under other tests' load
def test_demo_with_the_default_backend(env, settings):
    pytest.importorskip("sentence_transformers")
    env = {**env, "TAGGER_BACKEND": "signals"}
    result = run_cli(env, "demo", timeout=280, in_process=False)
    lines = _check_output(result.stdout)
    assert all(line["tags"] for line in lines)  # scoring always keeps the best tag
    assert "backend signals, model all-MiniLM-L6-v2" in result.stdout
    # Our user's own example: MiniCPM, a family of LLMs (its README is mostly Chinese).
    assert "ai" in {tag["name"] for line in lines if line["id"] == "7462" for tag in line["tags"]}

    # Each tag's confidence is stored: exported on request, and the least confident listed for review.
    exported = [json.loads(line) for line in run_cli(env, "export", "--with-scores").stdout.splitlines()]
    assert [{"id": e["id"], "tags": [{"id": t["id"], "name": t["name"]} for t in e["tags"]]} for e in exported] == lines
    for entry in exported:
        scores = [t["score"] for t in entry["tags"]]
        assert all(0 < s < 1 for s in scores) and scores == sorted(scores, reverse=True)
    review = [json.loads(line) for line in run_cli(env, "review", "--limit", "3", "--json").stdout.splitlines()]
    confidences = sorted(e["tags"][0]["score"] for e in exported)
    assert [r["confidence"] for r in review] == confidences[:3]
