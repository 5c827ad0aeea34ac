"""`tagger calibrate` end to end on made-up READMEs: MiniLM computes the signals, the keyword backend
stands in for an LLM judge, the profile is written and then used by the engine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tagger.scoring import FEATURES, load_profile
from tests.support.data import write_jsonl
from tests.support.processes import run_cli

# Made-up READMEs, two per tag, so that each of 4 folds trains on every tag.
TOPICS = [
    ("cli", "A command-line tool to {} files from your terminal."),
    ("database", "An embedded SQL database engine that stores {} rows on disk."),
    ("game", "A retro platformer game where you {} through pixel worlds."),
    ("logging", "A logging library that writes structured {} log lines."),
]
GOLD = [
    {"repo": f"someone/{tag}-{n}", "readme": f"# project {n}\n\n" + text.format(verb), "gold": [tag], "primary": tag}
    for n, verb in enumerate(("rename", "search"))
    for tag, text in TOPICS
]


@pytest.mark.slow
def test_calibrate_writes_a_profile_of_weights_that_the_engine_then_uses(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    gold = write_jsonl(tmp_path / "gold.jsonl", GOLD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGER_")}
    result = run_cli(env, "calibrate", "--gold", str(gold), "--backend", "keyword", "--folds", "4",
                     "--out", str(tmp_path / "profiles"), "--json", timeout=300)
    summary = json.loads(result.stdout)
    assert summary["readmes"] == len(GOLD) and summary["folds"] == 4
    assert set(summary["fits"]) == {"signals", "signals+judge"}  # with and without the backend's answer
    for fit in summary["fits"].values():
        assert set(fit["in_sample"]) >= {"f1", "hit_rate", "primary_at_3"}
        assert set(fit["cross_validated"]) >= {"f1", "hit_rate", "primary_at_3"}
        assert fit["in_sample"]["hit_rate"] == 1.0  # every README names its tag outright

    written = Path(summary["written"])
    assert written == tmp_path / "profiles" / "keyword--keyword-v1.json"
    data = json.loads(written.read_text())
    assert {"weights", "bias", "threshold", "judge_k", "policies", "fitted_on"} <= set(data) <= {
        "weights", "bias", "threshold", "judge_k", "ratio", "tag_bias", "policies", "fitted_on"}
    assert set(data["weights"]) == set(FEATURES)
    assert "README" not in written.read_text() and "someone/" not in written.read_text()  # weights, not examples
    assert load_profile("keyword", "keyword-v1", tmp_path / "profiles").version == summary["profile_version"]

    # Text report, nothing written.
    text = run_cli(env, "calibrate", "--gold", str(gold), "--backend", "keyword", "--folds", "2", "--dry-run",
                   timeout=300).stdout
    assert "4-fold CV" not in text and "2-fold CV" in text and "dry run: not written" in text
