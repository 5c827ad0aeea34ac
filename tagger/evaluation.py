"""Tag quality against a gold file: the READMEs go through the very engine the workers use, without a
database or a queue, and the answers are scored per tag (micro-averaged) and per repo."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagger.engine import Tagged, TaggingEngine
from tagger.errors import ConfigError, InputError
from tagger.scoring import Profile, keep
from tagger.taxonomy import Taxonomy

TOP_ERRORS = 10
# Tags the text report lists (the JSON report has every tag): the most frequent, gold or predicted.
TEXT_PER_TAG = 25


@dataclass(frozen=True, slots=True)
class GoldRow:
    repo: str
    readme: str
    gold: tuple[str, ...]  # taxonomy names, normalised
    primary: str
    source: str = ""  # where the labels come from: source_of(its evidence)


_MANIFEST = re.compile(r"\.(json|toml|py|ya?ml|xml|cfg|gemspec)$")


def source_of(evidence: str) -> str:
    """The source of a gold row's labels, from its ``evidence``: the list or file it names first
    (``awesome-go section 'Logging' (...)`` → ``awesome-go``; ``owner/awesome-x README.md`` →
    ``awesome-x``); package manifests (``package.json keywords ...``) are one source, ``manifest``;
    "" when there is no evidence."""
    words = evidence.split()
    if not words:
        return ""
    first = words[0].rsplit("/", 1)[-1].strip("'\"():,;").lower()
    return "manifest" if _MANIFEST.search(first) else first


def _tag_name(taxonomy: Taxonomy, name: object, where: str) -> str:
    tag = taxonomy.by_name(name) if isinstance(name, str) else None
    if tag is None:
        raise InputError(f"{where}: {name!r} is not a tag of the taxonomy")
    return tag.name


def load_gold(path: Path | str, taxonomy: Taxonomy, limit: int | None = None) -> list[GoldRow]:
    """The rows of a JSON Lines gold file; tag names are matched as the taxonomy matches them
    (case and surrounding spaces do not matter), and an unknown name is an error, not a silent miss."""
    rows: list[GoldRow] = []
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 (closed below; lines are read lazily)
    except OSError as exc:
        raise InputError(f"cannot read gold file {path}: {exc}") from exc
    with handle:
        for number, line in enumerate(handle, 1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not JSON: {exc}") from exc
            if not isinstance(data, dict) or not isinstance(data.get("readme"), str):
                raise InputError(f"{where}: expected an object with a 'readme' string")
            gold_names = data.get("gold")
            if not isinstance(gold_names, list) or not gold_names:
                raise InputError(f"{where}: 'gold' must be a non-empty list of tag names")
            gold = tuple(dict.fromkeys(_tag_name(taxonomy, g, where) for g in gold_names))
            primary = _tag_name(taxonomy, data["primary"], where) if data.get("primary") else gold[0]
            evidence = data.get("evidence")
            rows.append(GoldRow(str(data.get("repo", number)), data["readme"], gold, primary,
                                source_of(evidence) if isinstance(evidence, str) else ""))
    return rows


def score(
    rows: Sequence[GoldRow], predictions: Sequence[Sequence[str]], *, errors: int = 0, seconds: float = 0.0
) -> dict[str, Any]:
    """Micro precision/recall/F1 over all (repo, tag) pairs, hit rate, primary@3 and the commonest
    mistakes. A README the engine failed on counts as a repo with no predicted tags."""
    if len(rows) != len(predictions):
        raise ValueError(f"{len(rows)} gold rows but {len(predictions)} predictions")
    true_pos = predicted = relevant = hits = primary_hits = 0
    missed: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    right: Counter[str] = Counter()
    confusions: Counter[tuple[str, str]] = Counter()
    for row, predicted_names in zip(rows, predictions, strict=True):
        guess, gold = set(predicted_names), set(row.gold)
        true_pos += len(guess & gold)
        predicted += len(guess)
        relevant += len(gold)
        hits += bool(guess & gold)
        primary_hits += row.primary in guess
        missed.update(gold - guess)
        wrong.update(guess - gold)
        right.update(guess & gold)
        # A gold tag missed where a wrong one was predicted: the wrong one took its place.
        confusions.update((g, p) for g in gold - guess for p in guess - gold)
    n = len(rows)
    precision = true_pos / predicted if predicted else 0.0
    recall = true_pos / relevant if relevant else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "hit_rate": round(hits / n, 4) if n else 0.0,
        "primary_at_3": round(primary_hits / n, 4) if n else 0.0,
        "mean_tags": round(predicted / n, 3) if n else 0.0,
        "errors": errors,
        "most_missed": _top(missed),
        "most_wrong": _top(wrong),
        "per_tag": _per_tag(right, missed, wrong),
        "confusions": [
            [g, p, c] for (g, p), c in sorted(confusions.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ERRORS]
        ],
        "seconds": round(seconds, 3),
        "repos_per_s": round(n / seconds, 3) if seconds > 0 else None,
    }


def _per_tag(right: Counter[str], missed: Counter[str], wrong: Counter[str]) -> dict[str, dict[str, Any]]:
    """Per tag: gold and predicted counts, precision and recall (None where undefined), commonest first."""
    tags = sorted(set(right) | set(missed) | set(wrong),
                  key=lambda t: (-(right[t] + missed[t]), -(right[t] + wrong[t]), t))
    table: dict[str, dict[str, Any]] = {}
    for tag in tags:
        gold, predicted = right[tag] + missed[tag], right[tag] + wrong[tag]
        table[tag] = {
            "gold": gold, "predicted": predicted, "correct": right[tag],
            "precision": round(right[tag] / predicted, 4) if predicted else None,
            "recall": round(right[tag] / gold, 4) if gold else None,
        }
    return table


def _top(counts: Counter[str]) -> list[list[Any]]:
    return [[name, count] for name, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ERRORS]]


def predict(
    engine: TaggingEngine,
    readmes: Sequence[str],
    *,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    repo_names: Sequence[str] | None = None,
    ranked: list[list[tuple[str, float]]] | None = None,
) -> tuple[list[list[str]], list[str], float]:
    """Tag names per README (empty where the engine failed), the failures' descriptions, and the
    seconds spent tagging (shortlisting and signals included, model loading not). ``ranked``, when
    given, receives each README's likeliest tags with their p whatever the threshold (scored engines;
    empty otherwise): the precision/recall curve is drawn from them."""
    predictions: list[list[str]] = []
    failures: list[str] = []
    names = list(repo_names) if repo_names is not None else [""] * len(readmes)
    started = time.perf_counter()
    for start in range(0, len(readmes), batch_size):
        batch = readmes[start : start + batch_size]
        for outcome in engine.tag(batch, names[start : start + batch_size]):
            if isinstance(outcome, Tagged):
                predictions.append([t.name for t in outcome.tags])
            else:
                predictions.append([])
                failures.append(f"{type(outcome).__name__}: {outcome}")
            if ranked is not None:
                ranked.append(list(outcome.ranked) if isinstance(outcome, Tagged) else [])
        if progress:
            progress(len(batch))
    return predictions, failures, time.perf_counter() - started


CURVE_KEYS = ("precision", "recall", "f1", "hit_rate", "primary_at_3", "mean_tags")
# The thresholds the curve is drawn at (the policies' own are added): 0 (three tags) to 1 (one tag).
CURVE_STEPS = 20


def curve(rows: Sequence[GoldRow], ranked: Sequence[Sequence[tuple[str, float]]], ratio: float,
          extra: Iterable[float] = ()) -> list[dict[str, float]]:
    """Precision, recall, F1, hit rate, primary@3 and tags/repo at each threshold (TAGGER_TAG_THRESHOLD)
    from 0 to 1, for READMEs ranked by a scored engine: the second and third tags are kept where their
    p reaches the threshold and ``ratio`` times the best tag's p, as the engine keeps them."""
    thresholds = sorted({round(i / CURVE_STEPS, 4) for i in range(CURVE_STEPS + 1)} | {round(t, 4) for t in extra})
    points = []
    for threshold in thresholds:
        kept = [[n for n, _ in keep(tags, threshold, ratio)] for tags in ranked]
        figures = score(rows, kept)
        points.append({"threshold": threshold, **{k: figures[k] for k in CURVE_KEYS}})
    return points


def policy_figures(rows: Sequence[GoldRow], ranked: Sequence[Sequence[tuple[str, float]]], profile: Profile
                   ) -> dict[str, dict[str, float]]:
    """Each policy of ``profile`` (and the threshold applied, when it is the operator's own): its
    threshold, ratio and figures on these READMEs."""
    points = {p: profile.policy_point(p) for p in profile.policies} or {"profile": (profile.threshold, profile.ratio)}
    if profile.policy == "custom":
        points["custom"] = (profile.threshold, profile.ratio)
    figures = {}
    for policy, (threshold, ratio) in points.items():
        found = score(rows, [[n for n, _ in keep(tags, threshold, ratio)] for tags in ranked])
        figures[policy] = {"threshold": round(threshold, 4), "ratio": round(ratio, 4),
                           **{k: found[k] for k in CURVE_KEYS}}
    return figures


def format_curve(points: Sequence[dict[str, float]], policies: dict[str, dict[str, float]]) -> Iterable[str]:
    """The curve as a table, then each policy's own point."""
    yield f"  {'threshold':>9} " + " ".join(f"{k:>12}" for k in CURVE_KEYS)
    for point in points:
        yield f"  {point['threshold']:>9.3f} " + " ".join(f"{point[k]:>12.3f}" for k in CURVE_KEYS)
    for policy, point in policies.items():
        yield (f"  {policy:<9} " + " ".join(f"{point[k]:>12.3f}" for k in CURVE_KEYS)
               + f"  (threshold {point['threshold']:.3f}, ratio {point['ratio']:.2f})")


def write_curve_plot(points: Sequence[dict[str, float]], policies: dict[str, dict[str, float]], path: Path,
                     title: str = "") -> None:
    """Precision, recall and F1 against the threshold, each policy's own point marked, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display here, and none needed
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("--plot needs matplotlib: pip install 'repo-tagger[dev]' (or matplotlib)") from exc
    xs = [p["threshold"] for p in points]
    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    try:
        colours = {"precision": "tab:blue", "recall": "tab:orange", "f1": "tab:green"}
        for key, style in (("precision", "-"), ("recall", "--"), ("f1", "-.")):
            axes.plot(xs, [p[key] for p in points], style, color=colours[key], linewidth=2,
                      label=key if key != "f1" else "F1")
        # A policy's own point: on the lines where its ratio is the curve's, beside them where not.
        for n, (policy, point) in enumerate(sorted(policies.items(), key=lambda kv: kv[1]["threshold"])):
            x = min(point["threshold"], 1.0)
            axes.axvline(x, color="grey", linestyle=":", linewidth=1)
            for key in colours:
                axes.plot([x], [point[key]], "o", color=colours[key], markersize=6)
            axes.annotate(f"{policy}\nt={point['threshold']:.2f} r={point['ratio']:.1f}", (x, 0.03 + 0.1 * (n % 3)),
                          fontsize=8, ha="left", va="bottom", xytext=(3, 0), textcoords="offset points")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("threshold for the 2nd and 3rd tag (TAGGER_TAG_THRESHOLD)")
        axes.set_ylabel("micro-averaged")
        axes.set_title(title or "tag quality against the threshold")
        axes.grid(True, alpha=0.3)
        axes.legend(loc="upper right")
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)


def format_report(report: dict[str, Any]) -> Iterable[str]:
    """The human-readable report of ``tagger eval``."""
    config = report.get("config", {})
    if config:
        yield "  ".join(f"{k}={v}" for k, v in config.items())
    yield f"repos              {report['n']}  (errors: {report['errors']})"
    yield f"precision (micro)  {report['precision']:.3f}"
    yield f"recall (micro)     {report['recall']:.3f}"
    yield f"F1 (micro)         {report['f1']:.3f}"
    yield f"hit rate           {report['hit_rate']:.3f}   (at least one gold tag predicted)"
    yield f"primary@3          {report['primary_at_3']:.3f}   (the primary tag among the predictions)"
    yield f"mean tags/repo     {report['mean_tags']:.2f}"
    speed = report["repos_per_s"]
    yield f"repos/s            {speed:.2f}" if speed is not None else "repos/s            n/a"
    yield "most missed        " + (", ".join(f"{n} ({c})" for n, c in report["most_missed"]) or "-")
    yield "most wrong         " + (", ".join(f"{n} ({c})" for n, c in report["most_wrong"]) or "-")
    confusions = report.get("confusions") or []
    yield "confusions         " + (", ".join(f"{g} -> {p} ({c})" for g, p, c in confusions) or "-")
    per_tag = report.get("per_tag") or {}
    if per_tag:
        shown = list(per_tag.items())[:TEXT_PER_TAG]
        yield ""
        yield f"per tag ({len(shown)} commonest of {len(per_tag)}; --json lists all)"
        yield f"  {'tag':<20} {'gold':>5} {'pred':>5} {'right':>5} {'precision':>9} {'recall':>7}"
        for tag, row in shown:
            precision = "-" if row["precision"] is None else f"{row['precision']:.2f}"
            recall = "-" if row["recall"] is None else f"{row['recall']:.2f}"
            yield (f"  {tag:<20} {row['gold']:>5} {row['predicted']:>5} {row['correct']:>5} {precision:>9} "
                   f"{recall:>7}")
    points = report.get("curve") or []
    if points:
        yield ""
        yield "precision/recall curve (TAGGER_TAG_THRESHOLD, at the applied ratio), then each policy's own point"
        yield from format_curve(points, report.get("policies") or {})
