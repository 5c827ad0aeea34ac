"""One score per (README, tag) from independent signals, and the 1 to 3 tags it keeps.

Signals (each a number per tag, computed for every tag of the taxonomy):

- ``kw_lead``: mentions of the tag (its name or our synonyms) in the README's lead: the title, the first
  paragraphs and the headings. What a README says first and in its outline is what the repo *is*.
- ``kw_body``: mentions anywhere else in the README's head (usage, examples): weaker evidence.
- ``kw_title``: mentions in the README's first paragraph alone (its title line), and ``kw_headings``:
  mentions in its heading lines alone; both are also part of ``kw_lead``: the fit weighs a title or an
  outline that names a tag apart from a tagline that mentions it in passing.
- ``name``: the tag (or a synonym) is a word of the repository's name (``OpenBMB/MiniCPM``).
- ``emb``: cosine similarity between the README and the tag's description (MiniLM), and
- ``emb_gap``: the same minus the README's best similarity: how far a tag is from the nearest one.
- ``cli_usage``: for the ``cli`` tag only, how much the README *shows* a command-line program (installed
  as one, its own name run from a shell, ``--help``, flags: tagger/structure.py), read from the raw
  Markdown; 0 for every other tag. ``lib_cue``, ``framework_cue``, ``web_app_cue`` and ``learning_cue``
  do the same for ``lib``, ``framework``, ``web-app`` and ``learning-resource``.
- ``judge``: the backend's own answer (the LLM's choice among the best candidates), 1 for its first
  tag, 1/2 and 1/3 for the next; 0 for tags it did not choose.

They are combined by a logistic model, ``p = 1 / (1 + exp(-(bias + tag_bias[tag] + sum(weight * signal))))``,
whose weights a :class:`Profile` holds per backend and model (``tagger calibrate`` fits them on labelled
READMEs; ``tag_bias`` is a per-tag offset shrunk towards 0, empty unless calibration kept it). The best
tag is always kept, the second and third only when their ``p`` reaches the threshold *and* a share
(``ratio``) of the best tag's ``p``; ``p`` is the confidence reported with each tag.

The threshold is the operator's choice of a point on the precision/recall curve: a profile stores one
threshold per policy (``precise``, ``balanced``, ``recall``: TAGGER_TAG_POLICY), each chosen by
calibration on its training READMEs, and TAGGER_TAG_THRESHOLD sets one's own point. The policy applied
is part of the profile's version, so a change of policy makes stored results stale.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from tagger.errors import ConfigError
from tagger.files import atomic_write
from tagger.keywords import count_mentions
from tagger.structure import CUE_TAG, FORM_CUES, form_cues

MAX_TAGS = 3
FEATURES: tuple[str, ...] = ("kw_lead", "kw_body", "name", "emb", "emb_gap", "cli_usage", "lib_cue", "framework_cue",
                             "web_app_cue", "learning_cue", "judge", "kw_title", "kw_headings")
# Signals added after profiles were shipped: a profile's version names them only when it weighs them,
# so profiles fitted before they existed keep their version (and their stored results stay fresh).
LATER_FEATURES = frozenset({"kw_title", "kw_headings"})
EMBEDDING_FEATURES = frozenset({"emb", "emb_gap"})
PROFILES_DIR = Path(__file__).resolve().parent / "data" / "profiles"
# The README head the signals read: more than an LLM prompt holds (mentions further down still count,
# as body mentions), while a README's tail (changelogs, licences, credits) stays out.
SIGNAL_TOKEN_BUDGET = 512
# Paragraphs that form the lead (after the title): the tagline and the first description.
LEAD_PARAGRAPHS = 3


POLICIES: tuple[str, ...] = ("precise", "balanced", "recall")
DEFAULT_POLICY = "balanced"


@dataclass(frozen=True, slots=True)
class Profile:
    """The weights of the logistic model for one backend and model: weights only, never examples."""

    name: str  # e.g. "signals" or "vllm--MiniCPM4-8B"; the file it was read from
    weights: Mapping[str, float]
    bias: float
    threshold: float  # the second and third tags are kept when their p reaches it
    judge_k: int = 8  # candidates the judge chooses among
    fitted_on: Mapping[str, Any] = field(default_factory=dict)  # how many READMEs, folds, CV figures
    ratio: float = 0.0  # ... and when their p reaches this share of the best tag's p
    tag_bias: Mapping[str, float] = field(default_factory=dict)  # per-tag offsets of the logit (shrunk)
    policies: Mapping[str, float] = field(default_factory=dict)  # a threshold per policy
    policy: str = ""  # the policy applied ("custom" for TAGGER_TAG_THRESHOLD); "" for none
    policy_ratios: Mapping[str, float] = field(default_factory=dict)  # a ratio per policy (default: ratio)

    def weight(self, feature: str) -> float:
        return float(self.weights.get(feature, 0.0))

    def with_policy(self, policy: str = DEFAULT_POLICY, threshold: float | None = None) -> Profile:
        """This profile at the operator's point of the precision/recall curve: a policy's threshold, or
        ``threshold`` itself. A profile without policies (not refitted since they exist) keeps its one
        threshold under every policy, so its answers and its version stay as they were."""
        if threshold is not None:
            return replace(self, threshold=float(threshold), policy="custom")
        if policy not in POLICIES:
            raise ConfigError(f"unknown tag policy {policy!r}: choose one of {', '.join(POLICIES)}")
        if not self.policies:
            return self
        if policy not in self.policies:
            raise ConfigError(f"profile {self.name!r} has no threshold for policy {policy!r}")
        return replace(self, threshold=float(self.policies[policy]),
                       ratio=float(self.policy_ratios.get(policy, self.ratio)), policy=policy)

    def policy_point(self, policy: str) -> tuple[float, float]:
        """A policy's (threshold, ratio) in this profile."""
        return float(self.policies.get(policy, self.threshold)), float(self.policy_ratios.get(policy, self.ratio))

    @property
    def uses_embeddings(self) -> bool:
        return any(self.weight(f) for f in EMBEDDING_FEATURES)

    @property
    def uses_judge(self) -> bool:
        return self.weight("judge") != 0

    @property
    def version(self) -> str:
        """A short digest of what changes answers: results record it, so a new profile makes them stale."""
        content: dict[str, Any] = {"w": {f: round(self.weight(f), 6) for f in FEATURES
                                         if f not in LATER_FEATURES or self.weight(f)}, "b": round(self.bias, 6),
                                   "t": round(self.threshold, 6), "k": self.judge_k}
        # Added only when set: profiles from before these existed keep their version (and results stay fresh).
        if self.ratio:
            content["r"] = round(self.ratio, 6)
        if self.tag_bias:
            content["tb"] = {t: round(v, 6) for t, v in sorted(self.tag_bias.items())}
        if self.policy:
            content["p"] = self.policy
        body = json.dumps(content, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:6]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "weights": {f: round(self.weight(f), 6) for f in FEATURES},
            "bias": round(self.bias, 6),
            "threshold": round(self.threshold, 6),
            "judge_k": self.judge_k,
        }
        if self.ratio:
            data["ratio"] = round(self.ratio, 6)
        if self.tag_bias:
            data["tag_bias"] = {t: round(v, 6) for t, v in sorted(self.tag_bias.items())}
        if self.policies:
            data["policies"] = {
                p: {"threshold": round(self.policies[p], 6), "ratio": round(self.policy_ratios.get(p, self.ratio), 6)}
                for p in POLICIES if p in self.policies
            }
        data["fitted_on"] = dict(self.fitted_on)
        return data

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> Profile:
        try:
            weights = {str(k): float(v) for k, v in dict(data["weights"]).items()}
            unknown = set(weights) - set(FEATURES)
            if unknown:
                raise ValueError(f"unknown signals {sorted(unknown)}")
            points = {str(k): dict(v) for k, v in dict(data.get("policies") or {}).items()}
            if set(points) - set(POLICIES):
                raise ValueError(f"unknown policies {sorted(set(points) - set(POLICIES))}")
            ratio = float(data.get("ratio", 0.0))
            return cls(name, weights, float(data["bias"]), float(data["threshold"]), int(data.get("judge_k", 8)),
                       dict(data.get("fitted_on") or {}), ratio,
                       {str(k): float(v) for k, v in dict(data.get("tag_bias") or {}).items()},
                       {k: float(v["threshold"]) for k, v in points.items()}, "",
                       {k: float(v.get("ratio", ratio)) for k, v in points.items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"profile {name!r} is malformed: {exc}") from exc

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Renamed into place: a worker starting meanwhile reads the old profile or the new, never half of one.
        with atomic_write(path) as stream:
            stream.write(json.dumps(self.to_json(), indent=2) + "\n")


def profile_name(backend: str, model: str) -> str:
    """The file stem of a backend and model's profile: ``llamacpp--SmolLM2-135M-Instruct``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model.rstrip("/").rsplit("/", 1)[-1])
    return f"{backend}--{safe}" if safe else backend


def load_profile(backend: str, model: str, directory: Path | None = None) -> Profile:
    """The profile fitted for this backend and model; else the backend's generic one (``llamacpp``);
    else the shipped ``default`` (signals only, judge trusted moderately) until someone calibrates."""
    folders = [d for d in (directory, PROFILES_DIR) if d is not None]
    for stem in (profile_name(backend, model), backend, "default"):
        for folder in folders:
            path = folder / f"{stem}.json"
            if path.exists():
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as exc:
                    raise ConfigError(f"cannot read profile {path}: {exc}") from exc
                return Profile.from_json(stem, data)
    raise ConfigError(f"no calibration profile for {backend}/{model} and no default in {PROFILES_DIR}")


# --- signals -----------------------------------------------------------------------------------------

_HEADING = re.compile(r"^#{1,6}\s")
_PARAGRAPHS = re.compile(r"\n\s*\n")
_NAME_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def split_lead(text: str) -> tuple[str, str]:
    """A cleaned README → (lead, body): the lead is the first paragraphs plus every heading line."""
    paragraphs = _PARAGRAPHS.split(text)
    lead = paragraphs[:LEAD_PARAGRAPHS]
    body: list[str] = []
    for paragraph in paragraphs[LEAD_PARAGRAPHS:]:
        for line in paragraph.split("\n"):
            (lead if _HEADING.match(line) else body).append(line)
    return "\n".join(lead), "\n".join(body)


def name_words(repo_name: str) -> str:
    """``OpenBMB/MiniCPM`` → ``mini cpm``; ``tmc/langchaingo`` → ``langchaingo``: the repository part,
    split where its case or punctuation changes, as text the keyword matcher can read."""
    repo = repo_name.rsplit("/", 1)[-1]
    return " ".join(w.lower() for w in _NAME_WORDS.findall(repo)) + " " + re.sub(r"[_.]", "-", repo.lower())


def squash(count: float) -> float:
    """Mention counts → 0..1 with diminishing returns: the first mention says most."""
    return 1.0 - math.exp(-count)


@dataclass(slots=True)
class Signals:
    """Every signal of one README: ``values[feature][tag index]``."""

    values: dict[str, list[float]]

    def row(self, index: int) -> dict[str, float]:
        return {f: v[index] for f, v in self.values.items()}


def keyword_signals(text: str, repo_name: str, names: Sequence[str]) -> dict[str, list[float]]:
    """``kw_lead``, ``kw_body``, ``name``, ``kw_title`` and ``kw_headings`` for every tag of ``names``, from
    a cleaned README head."""
    lead_text, body_text = split_lead(text)
    title = count_mentions(_PARAGRAPHS.split(text.strip(), maxsplit=1)[0])
    headings = count_mentions("\n".join(line for line in text.split("\n") if _HEADING.match(line)))
    lead = count_mentions(lead_text)
    body = count_mentions(body_text)
    in_name = count_mentions(name_words(repo_name)) if repo_name else {}
    return {
        "kw_lead": [squash(lead.get(n, 0)) for n in names],
        "kw_body": [squash(body.get(n, 0)) for n in names],
        "name": [1.0 if in_name.get(n) else 0.0 for n in names],
        "kw_title": [squash(title.get(n, 0)) for n in names],
        "kw_headings": [squash(headings.get(n, 0)) for n in names],
    }


def structure_signals(readme: str, repo_name: str, names: Sequence[str]) -> dict[str, list[float]]:
    """The form cues for every tag of ``names``: ``cli_usage`` is the CLI cue of a raw README at ``cli``
    and 0 elsewhere; ``lib_cue`` the same at ``lib``, and so on (tagger/structure.py)."""
    cues = form_cues(readme, repo_name)
    tag_of = {"cli_usage": CUE_TAG, **{signal: tag for tag, signal in FORM_CUES.items()}}
    return {signal: [value if n == tag_of[signal] else 0.0 for n in names] for signal, value in cues.items()}


def judge_signal(names: Sequence[str], chosen: Sequence[str]) -> list[float]:
    """The judge's answer as a signal: 1, 1/2, 1/3 by its order, 0 for tags it did not choose."""
    rank = {name: 1.0 / (i + 1) for i, name in enumerate(dict.fromkeys(chosen))}
    return [rank.get(name, 0.0) for name in names]


def embedding_signals(similarities: Sequence[float]) -> dict[str, list[float]]:
    best = max(similarities) if len(similarities) else 0.0
    return {"emb": [float(s) for s in similarities], "emb_gap": [float(s) - best for s in similarities]}


# --- the model ---------------------------------------------------------------------------------------


def logit(profile: Profile, signals: Mapping[str, float], tag: str = "") -> float:
    return (profile.bias + profile.tag_bias.get(tag, 0.0)
            + sum(profile.weight(f) * signals.get(f, 0.0) for f in FEATURES))


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def probabilities(profile: Profile, signals: Signals, names: Sequence[str]) -> list[float]:
    return [sigmoid(logit(profile, signals.row(i), name)) for i, name in enumerate(names)]


def rank(names: Sequence[str], probs: Sequence[float]) -> list[tuple[str, float]]:
    """The ``MAX_TAGS`` likeliest tags, best first, with their p (ties by name)."""
    return sorted(zip(names, probs, strict=True), key=lambda np: (-np[1], np[0]))[:MAX_TAGS]


def keep(ranked: Sequence[tuple[str, float]], threshold: float, ratio: float = 0.0) -> list[tuple[str, float]]:
    """Of tags ranked best first: the best always (a README describes something), then those whose p
    reaches the threshold and ``ratio`` times the best tag's p."""
    if not ranked:
        return []
    floor = max(threshold, ratio * ranked[0][1])
    return [(n, p) for i, (n, p) in enumerate(ranked[:MAX_TAGS]) if i == 0 or p >= floor]


def choose(names: Sequence[str], probs: Sequence[float], threshold: float, ratio: float = 0.0
           ) -> list[tuple[str, float]]:
    """The tags kept, best first, with their p (see :func:`keep`)."""
    return keep(rank(names, probs), threshold, ratio)


def candidates(names: Sequence[str], signals: Signals, k: int) -> list[str]:
    """What the judge chooses among, by a fixed rule (nothing fitted, so calibrating the judge's weight
    needs one judge pass only): tags the lead or the name mentions, then body mentions, then the
    nearest descriptions."""
    values = signals.values
    zeros = [0.0] * len(names)
    lead, body, name = values.get("kw_lead", zeros), values.get("kw_body", zeros), values.get("name", zeros)
    emb = values.get("emb", zeros)
    order = sorted(range(len(names)), key=lambda i: (-(lead[i] + name[i]), -body[i], -emb[i], names[i]))
    return [names[i] for i in order[:k]]


class Embedder(Protocol):
    def similarities(self, heads: Sequence[str], leads: Sequence[str]) -> list[list[float]]: ...


class Scorer:
    """Signals → p per tag → the chosen tags, under one profile. ``embedder`` is needed only when the
    profile weighs the embedding signals."""

    def __init__(self, names: Sequence[str], profile: Profile, embedder: Embedder | None = None) -> None:
        if profile.uses_embeddings and embedder is None:
            raise ConfigError(f"profile {profile.name!r} weighs embedding signals: an embedder is needed")
        self.names = tuple(names)
        self.profile = profile
        self.embedder = embedder

    def signals(self, texts: Sequence[str], repo_names: Sequence[str], readmes: Sequence[str] | None = None
                ) -> list[Signals]:
        """Every signal but the judge's, for cleaned README heads (SIGNAL_TOKEN_BUDGET) and repo names;
        the structural one needs the raw READMEs (cleaning drops code fences), when given."""
        found = [Signals(keyword_signals(t, n, self.names)) for t, n in zip(texts, repo_names, strict=True)]
        if readmes is not None:
            for signals, readme, name in zip(found, readmes, repo_names, strict=True):
                signals.values.update(structure_signals(readme, name, self.names))
        if self.embedder is not None and self.profile.uses_embeddings and texts:
            rows = self.embedder.similarities(list(texts), [split_lead(t)[0] or t for t in texts])
            for signals, row in zip(found, rows, strict=True):
                signals.values.update(embedding_signals(row))
        return found

    def candidates(self, signals: Signals) -> list[str]:
        return candidates(self.names, signals, self.profile.judge_k)

    def rank(self, signals: Signals) -> list[tuple[str, float]]:
        """The likeliest tags whatever the threshold, best first, with their p."""
        return rank(self.names, probabilities(self.profile, signals, self.names))

    def choose(self, signals: Signals) -> list[tuple[str, float]]:
        """The tags kept, best first, with their p."""
        return keep(self.rank(signals), self.profile.threshold, self.profile.ratio)
