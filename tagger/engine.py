"""The tagging core shared by every backend: README → prompt → model → validated tags."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from tagger.answer import parse_answer
from tagger.backends import Generation, Tagger
from tagger.errors import BackendOutOfMemory, BackendUnavailable, TaggerError, UnusableReadme
from tagger.prompt import Prompt, PromptBuilder
from tagger.readme import prepare_readme
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


def configured_prompt_version(taxonomy: Taxonomy, settings: Settings) -> str:
    """The prompt version an engine built from ``settings`` records, without loading any model: the
    producer compares it with stored results to find stale ones."""
    version = PromptBuilder(taxonomy, with_descriptions=settings.prompt_descriptions).version
    label = shortlist_label(settings.shortlist, settings.shortlist_k)
    return version + (f"+{label}" if label else "")


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
    ) -> None:
        self.tagger = tagger
        self.taxonomy = taxonomy
        self.prompts = PromptBuilder(taxonomy, with_descriptions=with_descriptions)
        self.budget = readme_token_budget
        self.timeout_s = timeout_s
        self.shortlister = shortlister
        self._model_lock = threading.Lock()

    @classmethod
    def from_settings(cls, tagger: Tagger, taxonomy: Taxonomy, settings: Settings) -> TaggingEngine:
        """The engine that ``settings`` describe: budget, descriptions, shortlist (its model loads here)."""
        return cls(
            tagger,
            taxonomy,
            readme_token_budget=settings.readme_token_budget,
            timeout_s=settings.backend_timeout_s,
            with_descriptions=settings.prompt_descriptions,
            shortlister=create_shortlister(
                settings.shortlist, taxonomy, settings.shortlist_k, settings.embedding_model
            ),
        )

    @property
    def prompt_version(self) -> str:
        # A shortlist changes the answers as much as a new wording does: results must record it.
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

    def tag(self, readmes: Sequence[str]) -> list[Tagged | TaggerError]:
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
