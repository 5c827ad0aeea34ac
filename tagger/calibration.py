"""Fitting a :class:`~tagger.scoring.Profile` on labelled READMEs, and estimating it honestly.

The fit: a logistic regression of "this tag is gold" on the signals of every (README, tag) pair
(L2-regularised, Newton's method; pure Python: a few signals, ~90 pairs per README), then the
threshold for the second and third tags that maximises micro F1 on the same READMEs.

The estimate: k-fold cross-validation. The READMEs are split into folds first (a seeded shuffle);
for each fold, weights and threshold are fitted on the other folds only and the fold is tagged with
them, so every README is tagged by a profile that never saw it. The report gives those out-of-fold
figures beside the in-sample ones (fitted and scored on everything).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tagger.scoring import FEATURES, MAX_TAGS, Profile, Signals, choose, probabilities, sigmoid

# L2 penalty on the weights (not the bias), per labelled README: keeps weights finite when a signal
# separates the training pairs perfectly, and small signals from taking noise. Fixed, not tuned.
L2_PER_README = 0.01
NEWTON_STEPS = 50


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled README, reduced to what calibration needs: its signals, never its text."""

    signals: Signals
    gold: frozenset[str]
    primary: str


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


def fit_threshold(ranked: Sequence[Sequence[tuple[str, float]]], examples: Sequence[Example]) -> float:
    """The threshold for the second and third tags that maximises micro F1 over ``examples``, given each
    README's tags ranked by p (at least the top three). Ties go to the highest threshold (fewer tags)."""
    # F1 only changes where the threshold passes a second or third tag's p: try those values.
    values = sorted({p for tags in ranked for _, p in tags[1:MAX_TAGS]}, reverse=True)
    best_threshold, best_f1 = 1.0 + 1e-9, -1.0
    for threshold in [1.0 + 1e-9, *values]:
        predictions = [[n for i, (n, p) in enumerate(tags[:MAX_TAGS]) if i == 0 or p >= threshold] for tags in ranked]
        f1 = micro_f1(predictions, examples)
        if f1 > best_f1 + 1e-12:
            best_threshold, best_f1 = threshold, f1
    return best_threshold


def fit_profile(
    examples: Sequence[Example], names: Sequence[str], features: Sequence[str], *, name: str = "fitted",
    judge_k: int = 8,
) -> Profile:
    """Weights for ``features`` (others 0) and the threshold, fitted on ``examples``."""
    unknown = set(features) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown signals {sorted(unknown)}")
    if not examples:
        raise ValueError("no labelled READMEs to fit on")
    rows, labels = _pairs(examples, names, features)
    weights, bias = fit_logistic(rows, labels, L2_PER_README * len(examples))
    draft = Profile(name, dict(zip(features, weights, strict=True)), bias, 1.0, judge_k)
    ranked = [_ranked(draft, e, names) for e in examples]
    return Profile(name, draft.weights, bias, fit_threshold(ranked, examples), judge_k)


def _ranked(profile: Profile, example: Example, names: Sequence[str]) -> list[tuple[str, float]]:
    probs = probabilities(profile, example.signals, names)
    return sorted(zip(names, probs, strict=True), key=lambda np: (-np[1], np[0]))[:MAX_TAGS]


def predict(profile: Profile, examples: Sequence[Example], names: Sequence[str]) -> list[list[tuple[str, float]]]:
    return [choose(names, probabilities(profile, e.signals, names), profile.threshold) for e in examples]


def folds(n: int, k: int, seed: int = 0) -> list[list[int]]:
    """``n`` indices split into ``k`` folds of near-equal size by a seeded shuffle."""
    if not 2 <= k <= n:
        raise ValueError(f"need 2 <= folds <= READMEs, got {k} folds for {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [sorted(order[i::k]) for i in range(k)]


def cross_validate(
    examples: Sequence[Example], names: Sequence[str], features: Sequence[str], k: int, *, seed: int = 0,
    judge_k: int = 8,
) -> tuple[list[list[tuple[str, float]]], list[Profile]]:
    """Out-of-fold predictions (each README tagged by a profile fitted without it), in order, and the
    profile of each fold."""
    predictions: list[list[tuple[str, float]] | None] = [None] * len(examples)
    profiles: list[Profile] = []
    for fold in folds(len(examples), k, seed):
        held_out = set(fold)
        training = [e for i, e in enumerate(examples) if i not in held_out]
        profile = fit_profile(training, names, features, judge_k=judge_k)
        profiles.append(profile)
        for i, tags in zip(fold, predict(profile, [examples[i] for i in fold], names), strict=True):
            predictions[i] = tags
    return [p or [] for p in predictions], profiles


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
    judge_k: int = 8, name: str = "fitted",
) -> tuple[Profile, dict[str, Any]]:
    """The profile fitted on every example, with its in-sample and k-fold cross-validated figures."""
    profile = fit_profile(examples, names, features, name=name, judge_k=judge_k)
    in_sample = metrics([[n for n, _ in tags] for tags in predict(profile, examples, names)], examples)
    out_of_fold, fold_profiles = cross_validate(examples, names, features, k, seed=seed, judge_k=judge_k)
    cv = metrics([[n for n, _ in tags] for tags in out_of_fold], examples)
    spread = {
        f: [round(min(p.weight(f) for p in fold_profiles), 3), round(max(p.weight(f) for p in fold_profiles), 3)]
        for f in features
    }
    summary = {"readmes": len(examples), "folds": k, "seed": seed, "in_sample": in_sample, "cross_validated": cv,
               "fold_weight_range": spread,
               "fold_threshold_range": [round(min(p.threshold for p in fold_profiles), 4),
                                        round(max(p.threshold for p in fold_profiles), 4)]}
    fitted = Profile(profile.name, profile.weights, profile.bias, profile.threshold, judge_k, summary)
    return fitted, summary


def is_finite(profile: Profile) -> bool:
    return all(math.isfinite(v) for v in [*profile.weights.values(), profile.bias, profile.threshold])


_METRICS = ("f1", "precision", "recall", "hit_rate", "primary_at_3", "mean_tags")


def format_calibration(summary: dict[str, Any]) -> list[str]:
    """The human-readable report of ``tagger calibrate``."""
    lines = [
        f"backend={summary['backend']}  model={summary['model']}  READMEs={summary['readmes']}  "
        f"folds={summary['folds']} (seed {summary['seed']})  {summary['readmes_per_s']} READMEs/s",
        "",
        f"{'fit':<15} {'figures':<16} " + " ".join(f"{m:>12}" for m in _METRICS),
    ]
    for key, fit in summary["fits"].items():
        for kind, label in (("in_sample", "in-sample"), ("cross_validated", f"{summary['folds']}-fold CV")):
            values = fit[kind]
            lines.append(f"{key:<15} {label:<16} " + " ".join(f"{values[m]:>12.3f}" for m in _METRICS))
    lines.append("")
    for key, fit in summary["fits"].items():
        weights = "  ".join(f"{f}={w:+.2f}" for f, w in fit["weights"].items() if w)
        ranges = "  ".join(f"{f}:{lo:+.2f}..{hi:+.2f}" for f, (lo, hi) in fit["fold_weight_range"].items())
        lines.append(f"{key}: {weights}  bias={fit['bias']:+.2f}  threshold={fit['threshold']:.3f}")
        lines.append(f"  across folds: {ranges}  threshold:{fit['fold_threshold_range'][0]:.3f}.."
                     f"{fit['fold_threshold_range'][1]:.3f}")
    lines.append("")
    lines.append(f"chosen: {summary['chosen']} (the higher cross-validated F1) -> profile {summary['profile']}"
                 f"@{summary['profile_version']}" + (f", written to {summary['written']}" if "written" in summary
                                                     else " (dry run: not written)"))
    return lines
