"""A deterministic, dependency-free, instant tagger: tag names and our own synonyms found in the README.

A weak but real tagger: the baseline every LLM configuration must beat, and the backend that fault
tests and pipeline benchmarks use because it costs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tagger.backends import Generation
from tagger.keywords import keyword_tags
from tagger.prompt import Prompt

if TYPE_CHECKING:
    from tagger.settings import Settings

MODEL = "keyword-v1"


class KeywordTagger:
    name = "keyword"
    model = MODEL

    @classmethod
    def from_settings(cls, settings: Settings) -> KeywordTagger:
        return cls()

    def generate(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        return [Generation(json.dumps({"tags": keyword_tags(p.readme, p.choices)})) for p in prompts]

    def close(self) -> None:
        pass
