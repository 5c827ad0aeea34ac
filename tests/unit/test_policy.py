"""The operator's point on the precision/recall curve: policies fitted by calibration, the threshold
setting, leave-one-source-out folds, the curve and its picture. Synthetic data: no services, no models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tagger import calibration
from tagger.backends.keyword import KeywordTagger
from tagger.calibration import (
    TOP_ONLY,
    Cut,
    Example,
    best_cut,
    cross_validate,
    fit_cuts,
    fit_profile,
    fit_report,
    out_of_fold,
    source_folds,
    sweep,
    tag_offsets,
)
from tagger.engine import TaggingEngine, configured_profile, configured_prompt_version
from tagger.errors import ConfigError
from tagger.evaluation import GoldRow, curve, load_gold, policy_figures, source_of, write_curve_plot
from tagger.scoring import POLICIES, Profile, Signals, choose, keep
from tagger.settings import Settings, load_settings
from tagger.taxonomy import Taxonomy
from tests.support.data import write_jsonl
from tests.support.processes import run_cli
from tests.unit.test_scoring import NAMES, _synthetic

TAXONOMY = Taxonomy.load()
POLICIED = Profile("kw", {"kw_lead": 4.0, "kw_body": 2.0, "name": 1.0}, -3.0, 0.3, ratio=0.25,
                   policies={"precise": 0.6, "balanced": 0.3, "recall": 0.1},
                   policy_ratios={"precise": 0.25, "balanced": 0.25, "recall": 0.0})


def _example(gold: set[str], source: str = "") -> Example:
    return Example(Signals({}), frozenset(gold), sorted(gold)[0], source)


# --- the cut ----------------------------------------------------------------------------------------


def test_a_second_tag_needs_the_threshold_and_a_share_of_the_best() -> None:
    ranked = [("a", 0.9), ("b", 0.4), ("c", 0.2)]
    assert keep(ranked, 0.3) == [("a", 0.9), ("b", 0.4)]
    assert keep(ranked, 0.3, ratio=0.5) == [("a", 0.9)]  # 0.4 < 0.5 × 0.9
    assert keep(ranked, 0.1, ratio=0.2) == ranked
    assert keep([("a", 0.01)], 0.5, 0.9) == [("a", 0.01)]  # the best always
    assert choose(("a", "b"), [0.2, 0.6], 0.5, 0.0) == [("b", 0.6)]


def test_the_sweep_counts_what_each_threshold_keeps() -> None:
    examples = [_example({"a", "b"}), _example({"x"})]
    ranked = [[("a", 0.9), ("b", 0.5), ("c", 0.4)], [("y", 0.8), ("x", 0.5), ("z", 0.1)]]
    cuts = sweep(ranked, examples)
    assert cuts[0] == Cut(TOP_ONLY, 1, 2, 3, hits=1, readmes=2)  # the best tags alone: one right of two
    assert cuts[1] == Cut(0.5, 3, 4, 3, hits=2, readmes=2)  # both 0.5s pass together
    assert cuts[1].hit_rate == 1.0
    assert [c.threshold for c in cuts] == [TOP_ONLY, 0.5, 0.4, 0.1]
    # With a ratio of 0.6, 0.5 < 0.6 × 0.9 is not eligible in the first README, yet is in the second.
    assert [(c.threshold, c.true_pos) for c in sweep(ranked, examples, 0.6)] == [(TOP_ONLY, 1), (0.5, 2)]


def test_policies_are_points_of_one_curve_precise_above_balanced_above_recall() -> None:
    cuts = [Cut(TOP_ONLY, 60, 100, 160), Cut(0.5, 85, 140, 160), Cut(0.3, 100, 200, 160), Cut(0.1, 110, 300, 160)]
    precise, balanced, recall = (best_cut(cuts, beta) for beta in (0.5, 1.0, 2.0))
    assert precise.threshold >= balanced.threshold >= recall.threshold
    assert best_cut(cuts, 1.0) == max(cuts, key=lambda c: c.f_beta(1.0))
    # Ties go to fewer tags.
    assert best_cut([Cut(TOP_ONLY, 1, 1, 2), Cut(0.5, 2, 2, 4)], 1.0).threshold == TOP_ONLY


def test_calibration_stores_one_threshold_per_policy_in_order() -> None:
    examples = _synthetic(120)
    profile = fit_profile(examples, NAMES, ["kw_lead", "kw_body", "emb"])
    assert set(profile.policies) == set(profile.policy_ratios) == set(POLICIES)
    kept = {p: sum(len(keep(calibration._ranked(profile.with_policy(p), e, NAMES), profile.with_policy(p).threshold,
                            profile.with_policy(p).ratio)) for e in examples) for p in POLICIES}
    assert kept["precise"] <= kept["balanced"] <= kept["recall"]
    assert (profile.threshold, profile.ratio) == profile.policy_point("balanced") and 0 <= profile.ratio < 1
    cuts = fit_cuts([[("alpha", 0.9), ("beta", 0.2)]], [_example({"alpha"})], ratios=(0.0, 0.5))
    assert cuts["balanced"] == (TOP_ONLY, 0.0)  # a wrong second tag is never worth keeping
    again = Profile.from_json("again", json.loads(json.dumps(profile.to_json())))
    assert again.policy_point("recall") == pytest.approx(profile.policy_point("recall"), abs=1e-6)


def test_per_tag_offsets_shrink_towards_the_global_bias() -> None:
    examples = _synthetic(60)
    draft = Profile("d", {"kw_lead": 0.0}, -1.6, 0.5)  # p ≈ 0.17 for every tag: ~10 expected per tag
    loose, tight = (tag_offsets(draft, examples, NAMES, alpha) for alpha in (1.0, 100.0))
    assert set(loose) <= set(NAMES)
    assert all(abs(tight.get(n, 0.0)) < abs(loose.get(n, 0.0)) for n in loose)
    fitted = fit_profile(examples, NAMES, ["kw_lead", "emb"], prior_alpha=5.0)
    assert set(fitted.tag_bias) <= set(NAMES)


# --- the settings and the version --------------------------------------------------------------------


def test_the_policy_picks_the_profiles_threshold_and_the_setting_overrides_it() -> None:
    assert POLICIED.with_policy("precise").threshold == 0.6
    assert POLICIED.with_policy("recall").ratio == 0.0 and POLICIED.with_policy("balanced").ratio == 0.25
    assert POLICIED.with_policy().threshold == 0.3 and POLICIED.with_policy().policy == "balanced"
    own = POLICIED.with_policy("precise", 0.45)
    assert (own.threshold, own.ratio, own.policy) == (0.45, 0.25, "custom")  # the balanced ratio
    with pytest.raises(ConfigError):
        POLICIED.with_policy("greedy")
    # A profile from before policies keeps its one threshold and its version under every policy.
    old = Profile("old", {"kw_lead": 1.0}, 0.0, 0.2)
    assert old.with_policy("precise") == old and old.with_policy("recall").version == old.version


def test_the_threshold_setting_is_checked_and_empty_means_the_policys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGGER_TAG_THRESHOLD", "")
    monkeypatch.setenv("TAGGER_TAG_POLICY", "precise")
    settings = load_settings()
    assert settings.tag_threshold is None and settings.tag_policy == "precise"
    assert load_settings(tag_threshold=0.25).tag_threshold == 0.25
    for bad in ({"tag_threshold": 1.5}, {"tag_policy": "greedy"}):
        with pytest.raises(ConfigError, match="TAGGER_TAG_"):
            load_settings(**bad)


def test_a_change_of_policy_or_threshold_makes_results_stale(tmp_path: Path) -> None:
    POLICIED.save(tmp_path / "signals.json")
    versions = {}
    for policy in POLICIES:
        settings = Settings(backend="signals", profiles_dir=tmp_path, tag_policy=policy)
        profile = configured_profile(settings)
        assert profile is not None and profile.threshold == POLICIED.policies[policy]
        versions[policy] = configured_prompt_version(TAXONOMY, settings)
        engine = TaggingEngine.from_settings(KeywordTagger(), TAXONOMY, settings)
        assert engine.prompt_version == versions[policy]  # what the workers record is what the producer expects
    assert len(set(versions.values())) == 3
    own = configured_prompt_version(TAXONOMY, Settings(backend="signals", profiles_dir=tmp_path, tag_threshold=0.3))
    assert own not in versions.values()  # the balanced threshold set by hand is still another configuration


# --- cross-validation by source ------------------------------------------------------------------------


def test_sources_come_from_the_evidence() -> None:
    assert source_of("awesome-go section 'Logging' (avelino/awesome-go README.md)") == "awesome-go"
    assert source_of("e2b-dev/awesome-ai-agents README.md ('list of ...')") == "awesome-ai-agents"
    assert source_of("package.json keywords ['x'] and description 'y'") == "manifest"
    assert source_of("Cargo.toml keywords ['http']") == "manifest"
    assert source_of("README self-description: 'a tool'") == "readme"
    assert source_of("") == ""


def test_leave_one_source_out_holds_out_each_source_whole() -> None:
    sources = ["a", "b", "a", "", "c", "b", ""]
    splits = source_folds(sources)
    assert splits == [[0, 2], [1, 5], [3, 6], [4]]
    assert sorted(i for fold in splits for i in fold) == list(range(len(sources)))
    assert source_folds(["a", "a"]) == [] and source_folds([]) == []


def test_leave_source_out_never_fits_on_the_source_it_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    examples = [Example(e.signals, e.gold, e.primary, f"list-{i % 4}") for i, e in enumerate(_synthetic(40))]
    seen: list[set[str]] = []
    real = calibration.fit_profile

    def spy(training, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append({e.source for e in training})
        return real(training, *args, **kwargs)

    monkeypatch.setattr(calibration, "fit_profile", spy)
    splits = source_folds([e.source for e in examples])
    ranked, profiles = cross_validate(examples, NAMES, ["kw_lead", "emb"], 2, splits=splits)
    assert [sorted(s) for s in seen] == [sorted({"list-0", "list-1", "list-2", "list-3"} - {f"list-{i}"})
                                          for i in range(4)]
    kept = out_of_fold(ranked, profiles, splits, "balanced")
    assert all(1 <= len(tags) <= 3 for tags in kept)


def test_the_report_gives_kfold_and_leave_source_out_per_policy() -> None:
    examples = [Example(e.signals, e.gold, e.primary, f"list-{i % 3}") for i, e in enumerate(_synthetic(60))]
    profile, summary = fit_report(examples, NAMES, ["kw_lead", "emb"], 3)
    assert summary["sources"] == 3 and set(summary["policies"]) == set(POLICIES)
    for entry in summary["policies"].values():
        assert {"in_sample", "cross_validated", "leave_source_out"} <= set(entry)
    assert summary["cross_validated"] == summary["policies"]["balanced"]["cross_validated"]
    data = profile.to_json()
    assert set(data) <= {"weights", "bias", "threshold", "judge_k", "ratio", "tag_bias", "policies", "fitted_on"}
    assert Profile.from_json("again", json.loads(json.dumps(data))).version == profile.version


# --- the curve and its picture -------------------------------------------------------------------------


ROWS = [GoldRow("a/x", "", ("a", "b"), "a"), GoldRow("b/y", "", ("x",), "x")]
RANKED = [[("a", 0.9), ("b", 0.5), ("c", 0.4)], [("y", 0.8), ("x", 0.5), ("z", 0.1)]]


def test_the_curve_runs_from_three_tags_to_one() -> None:
    points = curve(ROWS, RANKED, 0.0, [0.45])
    assert points[0]["threshold"] == 0.0 and points[0]["mean_tags"] == 3.0
    assert points[-1]["threshold"] == 1.0 and points[-1]["mean_tags"] == 1.0
    at = next(p for p in points if p["threshold"] == 0.45)
    assert (at["precision"], at["recall"], at["hit_rate"]) == (0.75, 1.0, 1.0)
    assert all(set(p) == {"threshold", "precision", "recall", "f1", "hit_rate", "primary_at_3", "mean_tags"}
               for p in points)


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "out" / "curve.png"
    policies = policy_figures(ROWS, RANKED, POLICIED)
    assert set(policies) == set(POLICIES) and policies["precise"]["mean_tags"] == 1.0
    write_curve_plot(curve(ROWS, RANKED, 0.0), policies, path, "test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    assert b"IEND" in data[-16:]


def test_eval_prints_the_curve_and_keeps_its_json_keys(tmp_path: Path) -> None:
    """A scored keyword backend (a hand-made profile with policies): --json keeps the metric keys and
    adds the curve and the policies; --policy moves the cut; --plot writes a PNG."""
    profiles = tmp_path / "profiles"
    POLICIED.save(profiles / "keyword.json")
    gold = write_jsonl(tmp_path / "gold.jsonl", [
        {"repo": "a/logsift", "readme": "# logsift\nA command-line tool to search log files.", "gold": ["cli"],
         "primary": "cli", "evidence": "awesome-go section 'Command Line'"},
        {"repo": "b/tinyorm", "readme": "# tinyorm\nAn ORM for SQLite databases.", "gold": ["orm", "database"],
         "evidence": "awesome-python section 'ORM'"},
    ])
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGER_")}
    env.update(TAGGER_BACKEND="keyword", TAGGER_SCORING="on", TAGGER_PROFILES_DIR=str(profiles),
               TAGGER_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none", TAGGER_BROKER_URL="redis://127.0.0.1:1/0")
    report = json.loads(run_cli(env, "eval", "--gold", str(gold), "--json").stdout)
    assert {"n", "precision", "recall", "f1", "hit_rate", "primary_at_3", "mean_tags", "errors", "most_missed",
            "most_wrong", "per_tag", "confusions", "seconds", "repos_per_s", "load_s", "config"} <= set(report)
    assert {p: v["threshold"] for p, v in report["policies"].items()} == {"precise": 0.6, "balanced": 0.3,
                                                                         "recall": 0.1}
    assert {"precision", "recall", "f1", "hit_rate", "ratio"} <= set(report["policies"]["recall"])
    assert report["config"]["policy"] == "balanced" and report["config"]["threshold"] == 0.3
    assert [p["threshold"] for p in report["curve"]][:2] == [0.0, 0.05]
    precise = json.loads(run_cli(env, "eval", "--gold", str(gold), "--json", "--policy", "precise").stdout)
    assert precise["config"]["profile"] != report["config"]["profile"]  # the policy is in the version
    assert precise["mean_tags"] <= report["mean_tags"]
    if pytest.importorskip("matplotlib"):
        text = run_cli(env, "eval", "--gold", str(gold), "--plot", str(tmp_path / "c.png")).stdout
        assert "precision/recall curve" in text and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert load_gold(gold, TAXONOMY)[0].source == "awesome-go"
