"""The tagging core shared by every backend: README → prompt → model → validated tags."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from tagger.answer import parse_answer
from tagger.backends import Generation, Tagger, configured_model, is_scored
from tagger.embeddings import SignalEmbedder
from tagger.errors import (
    BackendOutOfMemory,
    BackendUnavailable,
    ConfigError,
    MalformedOutput,
    TaggerError,
    UnusableReadme,
)
from tagger.keywords import synonyms_by_name
from tagger.prompt import Prompt, PromptBuilder
from tagger.readme import prepare_readme
from tagger.scoring import SIGNAL_TOKEN_BUDGET, Profile, Scorer, Signals, judge_signal, keep, load_profile
from tagger.settings import Settings
from tagger.shortlist import Shortlister, create_shortlister, shortlist_label
from tagger.taxonomy import Tag, Taxonomy
from tagger.timeouts import call_with_timeout


@dataclass(frozen=True, slots=True)
class Tagged:
    tags: list[Tag]
    raw: str
    latency_ms: float  # the backend call's wall time, shared evenly across the batch
    prompt_tokens: int
    evaluated_tokens: int
    # The confidence of each tag (same order): the scoring model's probability that the tag is right.
    # Empty where the backend's answer is taken as is (scoring off: keyword, embedding, plugins).
    scores: tuple[float, ...] = ()
    # The likeliest tags whatever the threshold (best first, with p): `tagger eval` draws the
    # precision/recall curve from them. Empty where scoring is off.
    ranked: tuple[tuple[str, float], ...] = ()


def scoring_enabled(settings: Settings) -> bool:
    if settings.scoring == "auto":
        return is_scored(settings.backend)
    return settings.scoring == "on"


def configured_profile(settings: Settings) -> Profile | None:
    """The calibration profile an engine built from ``settings`` scores with (None: scoring off)."""
    if not scoring_enabled(settings):
        return None
    profile = load_profile(settings.backend, configured_model(settings), settings.profiles_dir)
    return profile.with_policy(settings.tag_policy, settings.tag_threshold)


def profile_label(profile: Profile) -> str:
    return f"{profile.name}@{profile.version}"


def configured_prompt_version(taxonomy: Taxonomy, settings: Settings) -> str:
    """The prompt version an engine built from ``settings`` records, without loading any model: the
    producer compares it with stored results to find stale ones."""
    version = PromptBuilder(taxonomy, with_descriptions=settings.prompt_descriptions).version
    profile = configured_profile(settings)
    if profile is not None:
        return f"{version}+{profile_label(profile)}"
    label = shortlist_label(settings.shortlist, settings.shortlist_k)
    return version + (f"+{label}" if label else "")


def create_scorer(settings: Settings, taxonomy: Taxonomy) -> Scorer | None:
    """The scorer ``settings`` describe (None: scoring off); MiniLM loads here when the profile needs it."""
    profile = configured_profile(settings)
    if profile is None:
        return None
    embedder = (
        SignalEmbedder(taxonomy, synonyms_by_name(), settings.embedding_model) if profile.uses_embeddings else None
    )
    return Scorer(taxonomy.names, profile, embedder)


class TaggingEngine:
    """Tags a batch of READMEs with one backend call; failures are returned per README, never raised
    for the batch, except those that concern the whole call (the backend timed out, say).

    Thread-safe: one batch is in the model at a time, while other threads (the worker's threads pool)
    prepare their prompts and validate their answers around it."""

    def __init__(
        self,
        tagger: Tagger,
        taxonomy: Taxonomy,
        *,
        readme_token_budget: int = 512,
        timeout_s: float = 0,
        with_descriptions: bool = True,
        shortlister: Shortlister | None = None,
        scorer: Scorer | None = None,
    ) -> None:
        self.tagger = tagger
        self.taxonomy = taxonomy
        self.prompts = PromptBuilder(taxonomy, with_descriptions=with_descriptions)
        self.budget = readme_token_budget
        self.timeout_s = timeout_s
        # With a scorer, the judge's candidates come from the signals, not from a shortlister.
        self.shortlister = None if scorer else shortlister
        self.scorer = scorer
        self._model_lock = threading.Lock()
        self._signal_lock = threading.Lock()

    @classmethod
    def from_settings(cls, tagger: Tagger, taxonomy: Taxonomy, settings: Settings) -> TaggingEngine:
        """The engine that ``settings`` describe: budget, descriptions, scoring profile or shortlist
        (their models load here)."""
        scorer = create_scorer(settings, taxonomy)
        return cls(
            tagger,
            taxonomy,
            readme_token_budget=settings.readme_token_budget,
            timeout_s=settings.backend_timeout_s,
            with_descriptions=settings.prompt_descriptions,
            shortlister=None if scorer else create_shortlister(
                settings.shortlist, taxonomy, settings.shortlist_k, settings.embedding_model
            ),
            scorer=scorer,
        )

    @property
    def prompt_version(self) -> str:
        # A profile or a shortlist changes the answers as much as a new wording does: results record it.
        if self.scorer:
            return f"{self.prompts.version}+{profile_label(self.scorer.profile)}"
        return self.prompts.version + (f"+{self.shortlister.label}" if self.shortlister else "")

    def build_prompt(self, readme: str) -> Prompt:
        prompt = self.build_prompts([readme])[0]
        if isinstance(prompt, TaggerError):
            raise prompt
        return prompt

    def build_prompts(self, readmes: Sequence[str]) -> list[Prompt | TaggerError]:
        """One prompt per README, or the reason there can be none, in order."""
        texts = [prepare_readme(readme, self.budget) for readme in readmes]
        usable = [text for text in texts if text]
        # One shortlisting call for the batch: embedding models are far faster on batches.
        shortlists = iter(self.shortlister.shortlist(usable) if self.shortlister and usable else [None] * len(usable))
        return [
            self.prompts.build(text, next(shortlists)) if text else UnusableReadme("README is empty after cleaning")
            for text in texts
        ]

    def tag(self, readmes: Sequence[str], repo_names: Sequence[str] | None = None) -> list[Tagged | TaggerError]:
        """Tags per README, or the reason there are none, in order. ``repo_names`` ("owner/name") feed
        the scoring's name signal; without them that signal is 0."""
        if self.scorer is not None:
            return self._tag_scored(self.scorer, readmes, repo_names or [""] * len(readmes))
        outcomes: list[Tagged | TaggerError | None] = [None] * len(readmes)
        prompts: list[Prompt] = []
        positions: list[int] = []
        for position, prompt in enumerate(self.build_prompts(readmes)):
            if isinstance(prompt, Prompt):
                prompts.append(prompt)
                positions.append(position)
            else:
                outcomes[position] = prompt
        if prompts:
            with self._model_lock:
                started = time.perf_counter()
                generations = self._generate(prompts)
                latency_ms = (time.perf_counter() - started) * 1000 / len(prompts)
            for position, generation in zip(positions, generations, strict=True):
                outcomes[position] = self._validate(generation, latency_ms)
        return cast(list[Tagged | TaggerError], outcomes)  # every position was filled above

    def _generate(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        try:
            return call_with_timeout(self.timeout_s, self.tagger.generate, prompts)
        except BackendOutOfMemory:
            if len(prompts) == 1:
                raise
            # Halves fit where the whole did not; a single README that does not fit is retried later.
            middle = len(prompts) // 2
            return self._generate(prompts[:middle]) + self._generate(prompts[middle:])

    def _validate(self, generation: Generation | Exception, latency_ms: float) -> Tagged | TaggerError:
        if isinstance(generation, TaggerError):
            return generation
        if isinstance(generation, Exception):
            return BackendUnavailable(f"{type(generation).__name__}: {generation}")
        try:
            tags = parse_answer(generation.text, self.taxonomy)
        except TaggerError as exc:
            return exc
        return Tagged(tags, generation.text, latency_ms, generation.prompt_tokens, generation.evaluated_tokens)

    def gather_signals(
        self, readmes: Sequence[str], repo_names: Sequence[str], *, judge: bool
    ) -> list[tuple[Signals, Generation | None] | TaggerError]:
        """Every signal of each README (``tagger calibrate`` fits on them), with the judge's answer when
        ``judge``: the backend chooses among each README's best candidates by the signals."""
        if self.scorer is None:
            raise ConfigError("this engine has no scorer: scoring is off")
        scorer = self.scorer
        heads = [prepare_readme(readme, SIGNAL_TOKEN_BUDGET) for readme in readmes]
        usable = [i for i, head in enumerate(heads) if head]
        outcomes: list[tuple[Signals, Generation | None] | TaggerError] = [
            UnusableReadme("README is empty after cleaning") for _ in readmes
        ]
        if not usable:
            return outcomes
        with self._signal_lock:  # one embedding batch at a time; the model lock stays free for the judge
            signals = scorer.signals([heads[i] for i in usable], [repo_names[i] for i in usable],
                                    [readmes[i] for i in usable])
        if not judge:
            for i, found in zip(usable, signals, strict=True):
                outcomes[i] = (found, None)
            return outcomes
        prompts = []
        for i, found in zip(usable, signals, strict=True):
            keep = set(scorer.candidates(found))
            # Taxonomy order: equal candidate sets share one compiled grammar in the backends.
            choices = tuple(n for n in self.taxonomy.names if n in keep)
            prompts.append(self.prompts.build(prepare_readme(readmes[i], self.budget) or heads[i], choices))
        with self._model_lock:
            generations = self._generate(prompts)
        for i, found, generation in zip(usable, signals, generations, strict=True):
            if isinstance(generation, Exception):
                outcomes[i] = generation if isinstance(generation, TaggerError) else BackendUnavailable(
                    f"{type(generation).__name__}: {generation}")
                continue
            try:
                chosen = [t.name for t in parse_answer(generation.text, self.taxonomy)]
            except MalformedOutput:
                chosen = []  # an answer that says nothing usable chooses nothing
            found.values["judge"] = judge_signal(scorer.names, chosen)
            outcomes[i] = (found, generation)
        return outcomes

    def _tag_scored(self, scorer: Scorer, readmes: Sequence[str], repo_names: Sequence[str]) -> list[
            Tagged | TaggerError]:
        """The tags the scoring model keeps, with their confidence."""
        started = time.perf_counter()
        gathered = self.gather_signals(readmes, repo_names, judge=scorer.profile.uses_judge)
        latency_ms = (time.perf_counter() - started) * 1000 / max(1, len(readmes))
        outcomes: list[Tagged | TaggerError] = []
        for item in gathered:
            if isinstance(item, TaggerError):
                outcomes.append(item)
                continue
            found, answer = item
            ranked = scorer.rank(found)
            chosen = keep(ranked, scorer.profile.threshold, scorer.profile.ratio)
            tags = [tag for tag in (self.taxonomy.by_name(name) for name, _ in chosen) if tag is not None]
            raw = answer.text if answer else json.dumps({"tags": [n for n, _ in chosen]})
            outcomes.append(Tagged(
                tags, raw, latency_ms, answer.prompt_tokens if answer else 0,
                answer.evaluated_tokens if answer else 0, tuple(round(p, 4) for _, p in chosen),
                tuple(ranked),  # unrounded: the curve must cut where the engine cuts
            ))
        return outcomes
