"""Fitting a :class:`~tagger.scoring.Profile` on labelled READMEs, and estimating it honestly.

The fit: a logistic regression of "this tag is gold" on the signals of every (README, tag) pair
(L2-regularised, Newton's method; pure Python: a few signals, ~90 pairs per README); optionally a
per-tag offset shrunk towards 0 (:func:`tag_offsets`); then, on the same READMEs, the ratio to the
best tag's p and one threshold per policy (precise, balanced, recall: POLICY_OBJECTIVES) for the
second and third tags.

The estimate: cross-validation, two ways. k-fold: the READMEs are split into folds first (a seeded
shuffle). Leave-one-source-out: each source of labels (an awesome list) is held out in turn, so the
figure estimates READMEs of kinds the labelled set does not hold. For each fold, everything above is
fitted on the other folds only and the fold is tagged with it, so every README is tagged by a profile
that never saw it. The report gives those out-of-fold figures per policy beside the in-sample ones.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tagger.scoring import (
    DEFAULT_POLICY,
    FEATURES,
    MAX_TAGS,
    POLICIES,
    Profile,
    Signals,
    keep,
    probabilities,
    rank,
    sigmoid,
)

# L2 penalty on the weights (not the bias), per labelled README: keeps weights finite when a signal
# separates the training pairs perfectly, and small signals from taking noise. Fixed, not tuned.
L2_PER_README = 0.01
NEWTON_STEPS = 50
# Shrinkage of the per-tag offsets (tag_offsets), in READMEs' worth of evidence (None: no offsets).
# 10: what an inner 5-fold CV over {none, 5, 10, 20} picks on all 163 dev READMEs; the nested
# leave-source-out estimate of that choice is in docs/quality.md.
PRIOR_ALPHA: float | None = 10.0


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled README, reduced to what calibration needs: its signals, never its text."""

    signals: Signals
    gold: frozenset[str]
    primary: str
    source: str = ""  # where its labels come from (tagger.evaluation.source_of): LOSO CV holds each out


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the systems here are 7x7)."""
    n = len(vector)
    a = [[*row, vector[i]] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        if abs(a[col][col]) < 1e-12:
            continue
        for r in range(n):
            if r != col and a[r][col]:
                factor = a[r][col] / a[col][col]
                a[r] = [x - factor * y for x, y in zip(a[r], a[col], strict=True)]
    return [a[i][n] / a[i][i] if abs(a[i][i]) >= 1e-12 else 0.0 for i in range(n)]


def fit_logistic(rows: Sequence[Sequence[float]], labels: Sequence[int], l2: float) -> tuple[list[float], float]:
    """Weights and bias maximising the L2-penalised log-likelihood (the bias is not penalised)."""
    dims = len(rows[0]) if rows else 0
    beta = [0.0] * (dims + 1)  # bias last
    for _ in range(NEWTON_STEPS):
        gradient = [0.0] * (dims + 1)
        hessian = [[0.0] * (dims + 1) for _ in range(dims + 1)]
        for row, label in zip(rows, labels, strict=True):
            x = [*row, 1.0]
            p = sigmoid(sum(b * v for b, v in zip(beta, x, strict=True)))
            w = max(p * (1 - p), 1e-9)
            for i in range(dims + 1):
                gradient[i] += (label - p) * x[i]
                if x[i]:
                    wi = w * x[i]
                    hi = hessian[i]
                    for j in range(dims + 1):
                        hi[j] += wi * x[j]
        for i in range(dims):
            gradient[i] -= l2 * beta[i]
            hessian[i][i] += l2
        step = _solve(hessian, gradient)
        beta = [b + s for b, s in zip(beta, step, strict=True)]
        if max(abs(s) for s in step) < 1e-7:
            break
    return beta[:dims], beta[dims]


def _pairs(examples: Sequence[Example], names: Sequence[str], features: Sequence[str]) -> tuple[
        list[list[float]], list[int]]:
    rows: list[list[float]] = []
    labels: list[int] = []
    for example in examples:
        columns = [example.signals.values.get(f) or [0.0] * len(names) for f in features]
        for i, name in enumerate(names):
            rows.append([column[i] for column in columns])
            labels.append(1 if name in example.gold else 0)
    return rows, labels


def micro_f1(predictions: Sequence[Sequence[str]], examples: Sequence[Example]) -> float:
    true_pos = sum(len(set(p) & e.gold) for p, e in zip(predictions, examples, strict=True))
    predicted = sum(len(set(p)) for p in predictions)
    relevant = sum(len(e.gold) for e in examples)
    return 2 * true_pos / (predicted + relevant) if predicted + relevant else 0.0


# --- where to cut: the threshold (and ratio) of each policy -------------------------------------------

# Shares of the best tag's p that a second or third tag must also reach, tried by the fit (0: off).
RATIOS: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6)
TOP_ONLY = 1.0 + 1e-9  # a threshold no p reaches: the best tag alone


@dataclass(frozen=True, slots=True)
class Cut:
    """One point of the curve on labelled READMEs: a threshold and what it keeps."""

    threshold: float
    true_pos: int
    predicted: int
    relevant: int
    hits: int = 0  # READMEs with a gold tag kept
    readmes: int = 0

    def f_beta(self, beta: float) -> float:
        b2 = beta * beta
        denominator = b2 * self.relevant + self.predicted
        return (1 + b2) * self.true_pos / denominator if denominator else 0.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.readmes if self.readmes else 0.0


def sweep(ranked: Sequence[Sequence[tuple[str, float]]], examples: Sequence[Example], ratio: float = 0.0) -> list[Cut]:
    """Every threshold at which the tags kept change (the top-only cut first, then down through each
    eligible second or third tag's p), with the counts there; ``ranked`` as :func:`tagger.scoring.rank`."""
    relevant = sum(len(e.gold) for e in examples)
    hit = [bool(tags) and tags[0][0] in e.gold for tags, e in zip(ranked, examples, strict=True)]
    true_pos = hits = sum(hit)
    predicted = sum(1 for tags in ranked if tags)
    events = sorted(
        ((p, n in e.gold, i) for i, (tags, e) in enumerate(zip(ranked, examples, strict=True)) if tags
         for n, p in tags[1:MAX_TAGS] if p >= ratio * tags[0][1]),
        key=lambda event: -event[0],
    )
    cuts = [Cut(TOP_ONLY, true_pos, predicted, relevant, hits, len(examples))]
    for position, (p, right, i) in enumerate(events):
        true_pos += right
        predicted += 1
        if right and not hit[i]:
            hit[i] = True
            hits += 1
        if position + 1 == len(events) or events[position + 1][0] < p:  # equal p's pass the threshold together
            cuts.append(Cut(p, true_pos, predicted, relevant, hits, len(examples)))
    return cuts


def best_cut(cuts: Sequence[Cut], beta: float) -> Cut:
    """The cut of highest F-beta; ties go to the highest threshold (fewer tags)."""
    return best_by(cuts, lambda cut: cut.f_beta(beta))


def best_by(cuts: Sequence[Cut], objective: Callable[[Cut], float]) -> Cut:
    """The cut of highest ``objective``; ties go to the highest threshold (fewer tags)."""
    best = cuts[0]
    for cut in cuts[1:]:
        if objective(cut) > objective(best) + 1e-12:
            best = cut
    return best


def fit_threshold(ranked: Sequence[Sequence[tuple[str, float]]], examples: Sequence[Example]) -> float:
    """The threshold for the second and third tags that maximises micro F1 over ``examples``, given each
    README's tags ranked by p (at least the top three). Ties go to the highest threshold (fewer tags)."""
    return best_cut(sweep(ranked, examples), 1.0).threshold


# precise: F0.5 (precision weighs double); recall: F2; balanced: the mean of F1 and the hit rate (a
# right tag for as many READMEs as possible, most tags right: max F1 alone keeps ~1.3 tags and misses
# the hit rate). docs/quality.md compares the objectives tried, by k-fold and leave-source-out CV.
POLICY_OBJECTIVES: dict[str, Callable[[Cut], float]] = {
    "precise": lambda cut: cut.f_beta(0.5),
    "balanced": lambda cut: (cut.f_beta(1.0) + cut.hit_rate) / 2,
    "recall": lambda cut: cut.f_beta(2.0),
}


def policy_objective(policy: str) -> Callable[[Cut], float]:
    """What a policy's cut maximises on the training READMEs."""
    return lambda cut: POLICY_OBJECTIVES[policy](cut)


def fit_cuts(ranked: Sequence[Sequence[tuple[str, float]]], examples: Sequence[Example],
             ratios: Sequence[float] = RATIOS) -> dict[str, tuple[float, float]]:
    """Each policy's (threshold, ratio): the cut of the best objective over every ratio tried (a ratio
    that helps F1 would cap what ``recall`` may keep, so each policy has its own)."""
    curves = {r: sweep(ranked, examples, r) for r in ratios}
    points: dict[str, tuple[float, float]] = {}
    for policy in POLICIES:
        objective = policy_objective(policy)
        # Ties go to the smallest ratio (the simpler rule).
        ratio = max(ratios, key=lambda r: (round(objective(best_by(curves[r], objective)), 12), -r))
        points[policy] = (best_by(curves[ratio], objective).threshold, ratio)
    return points


# --- per-tag offsets -----------------------------------------------------------------------------------


def tag_offsets(profile: Profile, examples: Sequence[Example], names: Sequence[str], alpha: float) -> dict[str, float]:
    """Per tag, ``log((observed + alpha) / (expected + alpha))``: how much more (or less) often the tag is
    gold on the training READMEs than the global model expects (the sum of its p). ``alpha`` shrinks
    towards 0, the global bias: a tag gold for two READMEs moves little."""
    expected = [0.0] * len(names)
    for example in examples:
        for i, p in enumerate(probabilities(profile, example.signals, names)):
            expected[i] += p
    observed = [sum(name in e.gold for e in examples) for name in names]
    offsets = {name: math.log((o + alpha) / (x + alpha)) for name, o, x in zip(names, observed, expected, strict=True)}
    return {name: v for name, v in offsets.items() if abs(v) >= 1e-4}


# --- fitting and cross-validation ----------------------------------------------------------------------


def fit_profile(
    examples: Sequence[Example], names: Sequence[str], features: Sequence[str], *, name: str = "fitted",
    judge_k: int = 8, prior_alpha: float | None = None, ratios: Sequence[float] = RATIOS,
) -> Profile:
    """Weights for ``features`` (others 0), per-tag offsets when ``prior_alpha`` is given, the ratio and
    each policy's threshold, fitted on ``examples``; the profile's threshold is the default policy's."""
    unknown = set(features) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown signals {sorted(unknown)}")
    if not examples:
        raise ValueError("no labelled READMEs to fit on")
    rows, labels = _pairs(examples, names, features)
    weights, bias = fit_logistic(rows, labels, L2_PER_README * len(examples))
    draft = Profile(name, dict(zip(features, weights, strict=True)), bias, TOP_ONLY, judge_k)
    if prior_alpha is not None:
        draft = replace(draft, tag_bias=tag_offsets(draft, examples, names, prior_alpha))
    points = fit_cuts([_ranked(draft, e, names) for e in examples], examples, ratios)
    threshold, ratio = points[DEFAULT_POLICY]
    return replace(draft, threshold=threshold, ratio=ratio, policies={p: t for p, (t, _) in points.items()},
                   policy_ratios={p: r for p, (_, r) in points.items()})


def _ranked(profile: Profile, example: Example, names: Sequence[str]) -> list[tuple[str, float]]:
    return rank(names, probabilities(profile, example.signals, names))


def predict(profile: Profile, examples: Sequence[Example], names: Sequence[str]) -> list[list[tuple[str, float]]]:
    return [keep(_ranked(profile, e, names), profile.threshold, profile.ratio) for e in examples]


def folds(n: int, k: int, seed: int = 0) -> list[list[int]]:
    """``n`` indices split into ``k`` folds of near-equal size by a seeded shuffle."""
    if not 2 <= k <= n:
        raise ValueError(f"need 2 <= folds <= READMEs, got {k} folds for {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [sorted(order[i::k]) for i in range(k)]


def source_folds(sources: Sequence[str]) -> list[list[int]]:
    """One fold per source (leave-one-source-out), in order of first appearance; READMEs without a
    source form one fold together. Fewer than two sources: no folds (nothing to hold out)."""
    groups: dict[str, list[int]] = {}
    for i, source in enumerate(sources):
        groups.setdefault(source, []).append(i)
    return list(groups.values()) if len(groups) >= 2 else []


Fitter = Callable[[Sequence[Example]], Profile]


def cross_validate(
    examples: Sequence[Example], names: Sequence[str], features: Sequence[str], k: int, *, seed: int = 0,
    judge_k: int = 8, splits: Sequence[Sequence[int]] | None = None, prior_alpha: float | None = None,
) -> tuple[list[list[tuple[str, float]]], list[Profile]]:
    """Out-of-fold ranked tags (each README ranked by a profile fitted without it; keep them with the
    fold's profile, as :func:`out_of_fold` does), in order, and the profile of each fold. ``splits``
    replaces the k seeded folds (leave-one-source-out: :func:`source_folds`)."""
    ranked: list[list[tuple[str, float]]] = [[] for _ in examples]
    profiles: list[Profile] = []
    for fold in splits if splits is not None else folds(len(examples), k, seed):
        held_out = set(fold)
        training = [e for i, e in enumerate(examples) if i not in held_out]
        profile = fit_profile(training, names, features, judge_k=judge_k, prior_alpha=prior_alpha)
        profiles.append(profile)
        for i in fold:
            ranked[i] = _ranked(profile, examples[i], names)
    return ranked, profiles


def out_of_fold(ranked: Sequence[Sequence[tuple[str, float]]], profiles: Sequence[Profile],
                splits: Sequence[Sequence[int]], policy: str) -> list[list[str]]:
    """The tags each README keeps under ``policy``, cut by its own fold's profile."""
    kept: list[list[str]] = [[] for _ in ranked]
    for profile, fold in zip(profiles, splits, strict=True):
        at = profile.with_policy(policy)
        for i in fold:
            kept[i] = [n for n, _ in keep(ranked[i], at.threshold, at.ratio)]
    return kept


def metrics(predictions: Sequence[Sequence[str]], examples: Sequence[Example]) -> dict[str, float]:
    """Micro precision/recall/F1, hit rate, primary@3 and tags per README (as `tagger eval` reports)."""
    true_pos = sum(len(set(p) & e.gold) for p, e in zip(predictions, examples, strict=True))
    predicted = sum(len(set(p)) for p in predictions)
    relevant = sum(len(e.gold) for e in examples)
    n = len(examples) or 1
    precision = true_pos / predicted if predicted else 0.0
    recall = true_pos / relevant if relevant else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
        "hit_rate": round(sum(bool(set(p) & e.gold) for p, e in zip(predictions, examples, strict=True)) / n, 4),
        "primary_at_3": round(sum(e.primary in p for p, e in zip(predictions, examples, strict=True)) / n, 4),
        "mean_tags": round(predicted / n, 3),
    }


def fit_report(
    examples: Sequence[Example], names: Sequence[str], features: Sequence[str], k: int, *, seed: int = 0,
    judge_k: int = 8, name: str = "fitted", prior_alpha: float | None = None,
) -> tuple[Profile, dict[str, Any]]:
    """The profile fitted on every example, with its in-sample, k-fold and leave-one-source-out figures
    per policy (the top-level figures are the default policy's)."""
    profile = fit_profile(examples, names, features, name=name, judge_k=judge_k, prior_alpha=prior_alpha)
    k_splits = folds(len(examples), k, seed)
    kfold = cross_validate(examples, names, features, k, judge_k=judge_k, splits=k_splits, prior_alpha=prior_alpha)
    s_splits = source_folds([e.source for e in examples])
    loso = cross_validate(examples, names, features, k, judge_k=judge_k, splits=s_splits,
                          prior_alpha=prior_alpha) if s_splits else None
    everything = [list(range(len(examples)))]
    in_sample_ranked = [_ranked(profile, e, names) for e in examples]
    policies: dict[str, dict[str, Any]] = {}
    for policy in POLICIES:
        at = profile.with_policy(policy)
        entry: dict[str, Any] = {
            "threshold": round(at.threshold, 4),
            "ratio": round(at.ratio, 4),
            "in_sample": metrics(out_of_fold(in_sample_ranked, [profile], everything, policy), examples),
            "cross_validated": metrics(out_of_fold(*kfold, k_splits, policy), examples),
        }
        if loso is not None:
            entry["leave_source_out"] = metrics(out_of_fold(*loso, s_splits, policy), examples)
        policies[policy] = entry
    fold_profiles = kfold[1]
    summary: dict[str, Any] = {
        "readmes": len(examples), "folds": k, "seed": seed, "sources": len(s_splits),
        "prior_alpha": prior_alpha, "ratio": round(profile.ratio, 4),
        **{key: value for key, value in policies[DEFAULT_POLICY].items() if key not in ("threshold", "ratio")},
        "policies": policies,
        "fold_weight_range": {
            f: [round(min(p.weight(f) for p in fold_profiles), 3), round(max(p.weight(f) for p in fold_profiles), 3)]
            for f in features
        },
        "fold_threshold_range": [round(min(p.threshold for p in fold_profiles), 4),
                                 round(max(p.threshold for p in fold_profiles), 4)],
    }
    return replace(profile, fitted_on=summary), summary


def is_finite(profile: Profile) -> bool:
    return all(math.isfinite(v) for v in [*profile.weights.values(), profile.bias, profile.threshold])


_METRICS = ("f1", "precision", "recall", "hit_rate", "primary_at_3", "mean_tags")
_FIGURES = (("in_sample", "in-sample"), ("cross_validated", "{folds}-fold CV"),
            ("leave_source_out", "leave-source-out"))


def format_calibration(summary: dict[str, Any]) -> list[str]:
    """The human-readable report of ``tagger calibrate``: per fit and policy, in-sample, k-fold CV and
    leave-one-source-out CV side by side."""
    lines = [
        f"backend={summary['backend']}  model={summary['model']}  READMEs={summary['readmes']}  "
        f"folds={summary['folds']} (seed {summary['seed']})  sources={summary.get('sources', 0)}  "
        f"{summary['readmes_per_s']} READMEs/s",
        "",
        f"{'fit':<15} {'policy':<9} {'figures':<17} " + " ".join(f"{m:>12}" for m in _METRICS),
    ]
    for key, fit in summary["fits"].items():
        for policy, entry in fit["policies"].items():
            for kind, label in _FIGURES:
                if kind in entry:
                    values = entry[kind]
                    lines.append(f"{key:<15} {policy:<9} {label.format(folds=summary['folds']):<17} "
                                 + " ".join(f"{values[m]:>12.3f}" for m in _METRICS))
    lines.append("")
    for key, fit in summary["fits"].items():
        weights = "  ".join(f"{f}={w:+.2f}" for f, w in fit["weights"].items() if w)
        ranges = "  ".join(f"{f}:{lo:+.2f}..{hi:+.2f}" for f, (lo, hi) in fit["fold_weight_range"].items())
        cuts = "  ".join(f"{p}={e['threshold']:.3f}/{e['ratio']:.2f}" for p, e in fit["policies"].items())
        lines.append(f"{key}: {weights}  bias={fit['bias']:+.2f}  threshold/ratio: {cuts}")
        lines.append(f"  across folds: {ranges}  threshold:{fit['fold_threshold_range'][0]:.3f}.."
                     f"{fit['fold_threshold_range'][1]:.3f}")
    lines.append("")
    lines.append(f"chosen: {summary['chosen']} (the higher cross-validated F1) -> profile {summary['profile']}"
                 f"@{summary['profile_version']}" + (f", written to {summary['written']}" if "written" in summary
                                                     else " (dry run: not written)"))
    return lines
