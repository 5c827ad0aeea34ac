"""Scoring, threshold and calibration on synthetic data: no services, no models, seconds."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from tagger import calibration
from tagger.backends import Generation
from tagger.backends.keyword import KeywordTagger
from tagger.calibration import Example, cross_validate, fit_logistic, fit_profile, fit_report, fit_threshold, folds
from tagger.engine import Tagged, TaggingEngine, configured_prompt_version
from tagger.errors import BackendUnavailable, ConfigError
from tagger.keywords import count_mentions
from tagger.prompt import Prompt
from tagger.scoring import (
    FEATURES,
    PROFILES_DIR,
    Profile,
    Scorer,
    Signals,
    choose,
    judge_signal,
    keyword_signals,
    load_profile,
    name_words,
    split_lead,
)
from tagger.settings import Settings
from tagger.taxonomy import Taxonomy

TAXONOMY = Taxonomy.load()
NAMES = ("alpha", "beta", "gamma", "delta", "epsilon")
KEYWORD_ONLY = Profile("kw", {"kw_lead": 4.0, "kw_body": 2.0, "name": 1.0}, -3.0, 0.3)


def test_the_lead_is_the_first_paragraphs_and_every_heading() -> None:
    text = "# Title\n\nA tagline.\n\nMore intro.\n\nBody one.\n## Usage\nBody two."
    lead, body = split_lead(text)
    assert lead.split("\n") == ["# Title", "A tagline.", "More intro.", "## Usage"]
    assert body.split("\n") == ["Body one.", "Body two."]


def test_repo_names_become_words() -> None:
    assert name_words("OpenBMB/MiniCPM").split()[:2] == ["mini", "cpm"]
    assert "cli" in name_words("someone/fancy-cli").split()


def test_keyword_signals_weigh_where_a_mention_occurs() -> None:
    names = tuple(TAXONOMY.names)
    text = "# A database\n\nIt stores rows.\n\nIntro.\n\nUsage: run the cli, or the cli again."
    found = keyword_signals(text, "someone/yaml-thing", names)
    at = names.index
    assert found["kw_lead"][at("database")] > 0 and found["kw_body"][at("database")] == 0
    assert found["kw_body"][at("cli")] > found["kw_body"][at("database")]
    assert found["kw_body"][at("cli")] > 1 - math.exp(-1)  # two mentions say more than one, but less than twice
    assert found["name"][at("yaml")] == 1.0 and found["name"][at("cli")] == 0.0


def test_title_and_heading_mentions_are_signals_of_their_own() -> None:
    names = tuple(TAXONOMY.names)
    text = "# A database\n\nA cli for it.\n\nIntro.\n\n## Compiler notes\n\nMore."
    found = keyword_signals(text, "someone/thing", names)
    at = names.index
    assert found["kw_title"][at("database")] > 0 and found["kw_title"][at("cli")] == 0
    assert found["kw_headings"][at("compiler")] > 0 and found["kw_headings"][at("cli")] == 0


def test_cjk_phrases_count_inside_sentences() -> None:
    counts = count_mentions("这是一个大语言模型,支持深度学习。")
    assert counts.get("ai") == 2


def test_the_judge_signal_follows_its_order() -> None:
    assert judge_signal(NAMES, ["gamma", "alpha", "gamma"]) == [0.5, 0.0, 1.0, 0.0, 0.0]


def test_choose_keeps_the_best_always_and_others_by_threshold() -> None:
    probs = [0.05, 0.9, 0.4, 0.35, 0.31]
    assert choose(NAMES, probs, 0.5) == [("beta", 0.9)]
    assert choose(NAMES, probs, 0.34) == [("beta", 0.9), ("gamma", 0.4), ("delta", 0.35)]
    assert len(choose(NAMES, probs, 0.0)) == 3
    assert choose(NAMES, [0.01] * 5, 0.5) == [("alpha", 0.01)]  # even when nothing is likely


def test_profiles_round_trip_and_their_version_follows_the_weights(tmp_path: Path) -> None:
    profile = Profile("x", {"kw_lead": 1.5, "emb": 2.0}, -1.0, 0.2, 6)
    profile.save(tmp_path / "x.json")
    again = Profile.from_json("x", json.loads((tmp_path / "x.json").read_text()))
    assert again.version == profile.version and again.judge_k == 6
    assert Profile("x", {"kw_lead": 1.6, "emb": 2.0}, -1.0, 0.2, 6).version != profile.version
    assert Profile("x", {"kw_lead": 1.5, "emb": 2.0}, -1.0, 0.25, 6).version != profile.version
    assert profile.uses_embeddings and not profile.uses_judge
    with pytest.raises(ConfigError):
        Profile.from_json("bad", {"weights": {"nonsense": 1}, "bias": 0, "threshold": 0.5})


def test_profile_lookup_prefers_the_model_then_the_backend_then_the_default(tmp_path: Path) -> None:
    Profile("m", {"kw_lead": 1.0}, 0.0, 0.5).save(tmp_path / "llamacpp--big-model.json")
    Profile("b", {"kw_lead": 2.0}, 0.0, 0.5).save(tmp_path / "llamacpp.json")
    assert load_profile("llamacpp", "/models/big-model", tmp_path).name == "llamacpp--big-model"
    assert load_profile("llamacpp", "other", tmp_path).name == "llamacpp"
    assert load_profile("vllm", "org/Some-Model", tmp_path).name == "default"


def test_shipped_profiles_hold_weights_and_figures_only() -> None:
    files = sorted(PROFILES_DIR.glob("*.json"))
    assert {"signals.json", "default.json"} <= {f.name for f in files}
    for path in files:
        data = json.loads(path.read_text())
        assert set(data) <= {"weights", "bias", "threshold", "judge_k", "ratio", "tag_bias", "policies",
                             "fitted_on"}, path
        profile = Profile.from_json(path.stem, data)
        assert calibration.is_finite(profile) and 0 < profile.threshold <= 1, path
        # Aggregate figures only: nothing in a profile may name a README.
        assert all(isinstance(v, (int, float, str, dict, list)) for v in data.get("fitted_on", {}).values())
    assert load_profile("vllm", "openbmb/MiniCPM4-8B").uses_judge  # an uncalibrated LLM still judges


# --- calibration -----------------------------------------------------------------------------------


def _synthetic(n: int, seed: int = 1) -> list[Example]:
    """READMEs whose gold tags show in kw_lead and emb, with noise; kw_body is pure noise."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        gold = set(rng.sample(NAMES, rng.choice((1, 2))))
        values: dict[str, list[float]] = {f: [] for f in ("kw_lead", "kw_body", "emb")}
        for name in NAMES:
            is_gold = name in gold
            values["kw_lead"].append(1.0 if rng.random() < (0.7 if is_gold else 0.1) else 0.0)
            values["kw_body"].append(rng.random())
            values["emb"].append(rng.gauss(0.6 if is_gold else 0.3, 0.1))
        examples.append(Example(Signals(values), frozenset(gold), sorted(gold)[0]))
    return examples


def test_logistic_fit_finds_the_informative_signals() -> None:
    rng = random.Random(0)
    rows = [[rng.gauss(0, 1), rng.gauss(0, 1)] for _ in range(2000)]
    labels = [1 if rng.random() < 1 / (1 + math.exp(-(2.0 * a - 1.0))) else 0 for a, _ in rows]
    weights, bias = fit_logistic(rows, labels, l2=0.01)
    assert weights[0] == pytest.approx(2.0, abs=0.3) and abs(weights[1]) < 0.3 and bias == pytest.approx(-1, abs=0.3)


def test_threshold_maximises_f1() -> None:
    examples = [Example(Signals({}), frozenset({"a", "b"}), "a"), Example(Signals({}), frozenset({"c"}), "c")]
    ranked = [[("a", 0.9), ("b", 0.6), ("x", 0.2)], [("c", 0.8), ("y", 0.5), ("z", 0.1)]]
    # 0.6 keeps b (right) and not y (wrong): F1 1.0; lower keeps y, higher loses b.
    assert fit_threshold(ranked, examples) == pytest.approx(0.6)


def test_fitted_profile_tags_like_the_synthetic_truth() -> None:
    examples = _synthetic(200)
    profile = fit_profile(examples, NAMES, ("kw_lead", "kw_body", "emb"))
    assert profile.weight("kw_lead") > 1 and profile.weight("emb") > 1
    assert abs(profile.weight("kw_body")) < profile.weight("kw_lead") / 3
    _, summary = fit_report(examples, NAMES, ("kw_lead", "kw_body", "emb"), 5)
    assert summary["cross_validated"]["f1"] > 0.6
    assert summary["in_sample"]["f1"] >= summary["cross_validated"]["f1"] - 0.05


def test_folds_partition_the_readmes_the_same_way_every_time() -> None:
    split = folds(23, 5, seed=3)
    assert sorted(i for fold in split for i in fold) == list(range(23))
    assert {len(fold) for fold in split} == {4, 5}
    assert split == folds(23, 5, seed=3) != folds(23, 5, seed=4)
    with pytest.raises(ValueError):
        folds(3, 5)


def test_cross_validation_never_fits_on_the_readmes_it_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    examples = _synthetic(30)
    seen: list[set[int]] = []
    real_fit = calibration.fit_profile

    def recording_fit(training: Sequence[Example], *args: object, **kwargs: object) -> Profile:
        seen.append({id(e) for e in training})
        return real_fit(training, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(calibration, "fit_profile", recording_fit)
    predictions, profiles = cross_validate(examples, NAMES, ("kw_lead", "emb"), 3)
    assert len(profiles) == len(seen) == 3 and all(1 <= len(p) <= 3 for p in predictions)
    for training, fold in zip(seen, folds(30, 3), strict=True):
        assert not training & {id(examples[i]) for i in fold}
        assert len(training) == 30 - len(fold)


# --- the engine with a scorer ----------------------------------------------------------------------


class FixedJudge:
    """A backend that answers the same tags for every README, if the schema allows them."""

    name = "judge"
    model = "fixed"

    def __init__(self, answer: list[str], fail: bool = False) -> None:
        self.answer, self.fail = answer, fail
        self.seen: list[Prompt] = []

    def generate(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        self.seen.extend(prompts)
        if self.fail:
            return [BackendUnavailable("down") for _ in prompts]
        return [Generation(json.dumps({"tags": [t for t in self.answer if t in p.choices]})) for p in prompts]

    def close(self) -> None:
        pass


README = "# fastdb\n\nA database written in Go.\n\nIntro.\n\n## Usage\nUse the cli."


def test_scored_tags_carry_their_confidence_best_first() -> None:
    engine = TaggingEngine(KeywordTagger(), TAXONOMY, scorer=Scorer(TAXONOMY.names, KEYWORD_ONLY))
    (tagged, empty) = engine.tag([README, "   "], ["someone/fastdb", ""])
    assert isinstance(tagged, Tagged)
    assert tagged.tags[0].name == "database"
    assert len(tagged.scores) == len(tagged.tags) and list(tagged.scores) == sorted(tagged.scores, reverse=True)
    assert all(0 < s < 1 for s in tagged.scores)
    assert not isinstance(empty, Tagged)
    assert engine.prompt_version.startswith("p1d+kw@")


def test_a_weighted_judge_is_asked_among_the_candidates_and_counts() -> None:
    judged = Profile("j", {**KEYWORD_ONLY.weights, "judge": 8.0}, -3.0, 0.3, judge_k=4)
    judge = FixedJudge(["cli", "testing"])
    engine = TaggingEngine(judge, TAXONOMY, scorer=Scorer(TAXONOMY.names, judged))
    (tagged,) = engine.tag([README])
    assert isinstance(tagged, Tagged)
    assert len(judge.seen) == 1 and len(judge.seen[0].choices) == 4 and "cli" in judge.seen[0].choices
    assert "testing" not in judge.seen[0].choices  # not among the candidates: the schema forbids it
    assert tagged.tags[0].name == "cli"  # the judge's first choice, weighted 8, outranks the lead's mention
    # A judge with no weight is not asked at all.
    silent = FixedJudge(["cli"])
    TaggingEngine(silent, TAXONOMY, scorer=Scorer(TAXONOMY.names, KEYWORD_ONLY)).tag([README])
    assert silent.seen == []


def test_a_failing_judge_fails_the_readme() -> None:
    judged = Profile("j", {**KEYWORD_ONLY.weights, "judge": 1.0}, -3.0, 0.3)
    engine = TaggingEngine(FixedJudge([], fail=True), TAXONOMY, scorer=Scorer(TAXONOMY.names, judged))
    (outcome,) = engine.tag([README])
    assert isinstance(outcome, BackendUnavailable)


def test_a_profile_with_embedding_weights_needs_an_embedder() -> None:
    with pytest.raises(ConfigError):
        Scorer(TAXONOMY.names, Profile("e", {"emb": 1.0}, 0.0, 0.5))


def test_the_producer_knows_the_scoring_profile_without_loading_a_model(tmp_path: Path) -> None:
    KEYWORD_ONLY.save(tmp_path / "signals.json")
    settings = Settings(backend="signals", profiles_dir=tmp_path)
    engine = TaggingEngine.from_settings(KeywordTagger(), TAXONOMY, settings)
    assert engine.scorer is not None and engine.scorer.embedder is None
    expected = f"p1d+signals@{KEYWORD_ONLY.version}"
    assert engine.prompt_version == configured_prompt_version(TAXONOMY, settings) == expected
    # A new profile is a new prompt version: `tagger enqueue --stale` re-tags.
    Profile("kw", {"kw_lead": 5.0}, -3.0, 0.3).save(tmp_path / "signals.json")
    assert configured_prompt_version(TAXONOMY, settings) != engine.prompt_version
    # Baselines and backends of your own are taken as they answer.
    for backend in ("keyword", "embedding", "tests.faulty_backend:factory"):
        assert "@" not in configured_prompt_version(TAXONOMY, Settings(backend=backend))
    assert set(FEATURES) >= set(KEYWORD_ONLY.weights)
