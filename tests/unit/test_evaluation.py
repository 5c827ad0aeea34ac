"""`tagger eval`: the metric arithmetic on a tiny hand-made gold file, shortlisting, and the CLI end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tagger.backends.keyword import KeywordTagger
from tagger.engine import TaggingEngine, configured_prompt_version
from tagger.errors import InputError
from tagger.evaluation import format_report, load_gold, score
from tagger.settings import Settings
from tagger.shortlist import KeywordShortlister, create_shortlister
from tagger.taxonomy import Taxonomy
from tests.support.data import write_jsonl
from tests.support.processes import run_cli

TAXONOMY = Taxonomy.load()

# Made-up READMEs. What the keyword backend answers for each is in the comment; gold names carry the
# stray spaces and capitals that real label files have.
GOLD = [
    # keyword: cli, search, logging → 2 of 3 right, both gold found
    {"repo": "a/logsift", "readme": "# logsift\nA command-line tool to search log files.",
     "gold": ["cli ", "search"], "primary": "cli "},
    # keyword: orm, database → 1 of 2 right
    {"repo": "b/tinyorm", "readme": "# tinyorm\nAn ORM for SQLite databases in Python.",
     "gold": ["Database"], "primary": "database"},
    # keyword: game → wrong
    {"repo": "c/pixelquest", "readme": "# pixelquest\nA retro platformer game written in Lua.",
     "gold": ["3d"], "primary": "3d"},
    # keyword: nothing
    {"repo": "d/notes", "readme": "# notes\nMy personal notes about cooking.",
     "gold": ["learning-resource"], "primary": "learning-resource"},
]
KEYWORD_ANSWERS = [["cli", "search", "logging"], ["orm", "database"], ["game"], []]
# 3 right of 6 predicted, of 5 gold; 2 repos with a hit, 2 with the primary tag.
EXPECTED = {"n": 4, "precision": 0.5, "recall": 0.6, "f1": round(2 * 0.5 * 0.6 / 1.1, 4), "hit_rate": 0.5,
            "primary_at_3": 0.5, "mean_tags": 1.5}


@pytest.fixture
def gold_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "gold.jsonl", GOLD)


def test_gold_names_are_normalised_through_the_taxonomy(gold_file: Path) -> None:
    rows = load_gold(gold_file, TAXONOMY)
    assert [r.gold for r in rows] == [("cli", "search"), ("database",), ("3d",), ("learning-resource",)]
    assert [r.primary for r in rows] == ["cli", "database", "3d", "learning-resource"]
    assert len(load_gold(gold_file, TAXONOMY, limit=2)) == 2


def test_unknown_gold_tags_are_an_error_not_a_silent_miss(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"repo": "x", "readme": "text", "gold": ["no-such-tag"]}])
    with pytest.raises(InputError, match="no-such-tag"):
        load_gold(path, TAXONOMY)


def test_metric_arithmetic(gold_file: Path) -> None:
    report = score(load_gold(gold_file, TAXONOMY), KEYWORD_ANSWERS, seconds=2.0)
    assert {k: report[k] for k in EXPECTED} == EXPECTED
    assert report["most_missed"] == [["3d", 1], ["learning-resource", 1]]
    assert report["most_wrong"] == [["game", 1], ["logging", 1], ["orm", 1]]
    assert report["repos_per_s"] == 2.0


def test_per_tag_figures_and_confusions(gold_file: Path) -> None:
    report = score(load_gold(gold_file, TAXONOMY), KEYWORD_ANSWERS)
    per_tag = report["per_tag"]
    assert per_tag["cli"] == {"gold": 1, "predicted": 1, "correct": 1, "precision": 1.0, "recall": 1.0}
    assert per_tag["orm"] == {"gold": 0, "predicted": 1, "correct": 0, "precision": 0.0, "recall": None}
    assert per_tag["3d"] == {"gold": 1, "predicted": 0, "correct": 0, "precision": None, "recall": 0.0}
    assert sum(row["correct"] for row in per_tag.values()) == 3
    # Only the game README missed a gold tag while answering a wrong one; the last answered nothing.
    assert report["confusions"] == [["3d", "game", 1]]
    text = "\n".join(format_report(report))
    assert "3d -> game (1)" in text and "per tag" in text


def test_perfect_and_empty_answers(gold_file: Path) -> None:
    rows = load_gold(gold_file, TAXONOMY)
    perfect = score(rows, [list(r.gold) for r in rows])
    assert (perfect["precision"], perfect["recall"], perfect["f1"], perfect["hit_rate"]) == (1.0, 1.0, 1.0, 1.0)
    nothing = score(rows, [[] for _ in rows], errors=4)
    assert (nothing["precision"], nothing["recall"], nothing["f1"], nothing["errors"]) == (0.0, 0.0, 0.0, 4)


def test_keyword_shortlist_restricts_the_schema_not_the_prompt() -> None:
    plain = TaggingEngine(KeywordTagger(), TAXONOMY)
    engine = TaggingEngine(KeywordTagger(), TAXONOMY, shortlister=KeywordShortlister(TAXONOMY, 2))
    prompt = engine.build_prompt(GOLD[0]["readme"])
    assert prompt.choices == ("cli", "search")
    assert prompt.system == plain.build_prompt(GOLD[0]["readme"]).system  # the cached prefix is untouched
    assert engine.prompt_version == plain.prompt_version + "+kw2"
    # Nothing to go on: the whole taxonomy stays allowed.
    assert engine.build_prompt(GOLD[3]["readme"]).choices == tuple(TAXONOMY.names)
    tagged = engine.tag([GOLD[0]["readme"]])[0]
    assert [t.name for t in tagged.tags] == ["cli", "search"]  # type: ignore[union-attr]


def test_engine_from_settings() -> None:
    settings = Settings(backend="keyword", shortlist="keyword", shortlist_k=4, prompt_descriptions=False,
                        readme_token_budget=64)
    engine = TaggingEngine.from_settings(KeywordTagger(), TAXONOMY, settings)
    assert engine.prompt_version == "p1+kw4"
    assert engine.budget == 64
    assert create_shortlister("none", TAXONOMY, 8) is None


def test_the_producer_knows_the_prompt_version_without_loading_a_model() -> None:
    for mode, label in (("none", ""), ("keyword", "+kw4"), ("embedding", "+em4"), ("hybrid", "+hy4")):
        for descriptions, version in ((True, "p1d"), (False, "p1")):
            settings = Settings(backend="keyword", shortlist=mode, shortlist_k=4, prompt_descriptions=descriptions)
            assert configured_prompt_version(TAXONOMY, settings) == version + label
    settings = Settings(backend="keyword", shortlist="keyword", shortlist_k=4)
    engine = TaggingEngine.from_settings(KeywordTagger(), TAXONOMY, settings)
    assert engine.prompt_version == configured_prompt_version(TAXONOMY, settings)


def _offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGER_")}
    # Nothing listens on port 1: if eval touched the database or the queue, it would fail.
    env.update(TAGGER_BACKEND="keyword", TAGGER_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none",
               TAGGER_BROKER_URL="redis://127.0.0.1:1/0")
    return env


def test_eval_cli_end_to_end_with_the_keyword_backend(gold_file: Path) -> None:
    env = _offline_env()
    result = run_cli(env, "eval", "--gold", str(gold_file), "--json")
    report = json.loads(result.stdout)
    assert {k: report[k] for k in EXPECTED} == EXPECTED
    assert report["errors"] == 0
    assert report["config"]["backend"] == "keyword"
    assert report["repos_per_s"] > 0

    limited = json.loads(run_cli(env, "eval", "--gold", str(gold_file), "--limit", "1", "--json").stdout)
    assert (limited["n"], limited["precision"], limited["recall"]) == (1, round(2 / 3, 4), 1.0)

    text = run_cli(env, "eval", "--gold", str(gold_file), "--shortlist", "keyword", "--shortlist-k", "8").stdout
    assert "precision (micro)  0.500" in text
    assert "most missed        3d (1), learning-resource (1)" in text


def test_eval_cli_rejects_a_bad_gold_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"repo": "x", "readme": "a cli", "gold": ["nope"]}\n', encoding="utf-8")
    result = run_cli(_offline_env(), "eval", "--gold", str(path), check=False)
    assert result.returncode == 2
    assert "'nope' is not a tag" in result.stderr
