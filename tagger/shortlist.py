"""Candidate shortlisting: narrow the 90 tags to the K likeliest before the model answers.

A shortlist restricts only the answer's schema (the prompt's ``choices``), never the prompt text:
the fixed part of the prompt stays byte-identical for every README, so prefix caching still works,
and a small model that cannot tell 90 tags apart only has to choose among K.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, get_args

from tagger.embeddings import TagRanker
from tagger.errors import ConfigError
from tagger.keywords import keyword_tags
from tagger.settings import ShortlistMode
from tagger.taxonomy import Taxonomy

SHORTLIST_MODES: tuple[str, ...] = get_args(ShortlistMode)


class Shortlister(Protocol):
    label: str  # recorded in the prompt version: a different shortlist gives different results

    def shortlist(self, texts: Sequence[str]) -> list[tuple[str, ...] | None]:
        """For each cleaned README, the allowed tag names, or None to allow the whole taxonomy."""
        ...


_LABEL_PREFIX = {"keyword": "kw", "embedding": "em", "hybrid": "hy"}


def shortlist_label(mode: str, k: int) -> str | None:
    """How results record a shortlist (``kw8``), known without loading any model; None for ``none``."""
    return f"{_LABEL_PREFIX[mode]}{k}" if mode in _LABEL_PREFIX else None


def _in_taxonomy_order(taxonomy: Taxonomy, names: Sequence[str]) -> tuple[str, ...]:
    # One order for one set: equal shortlists share one compiled grammar in the backends' caches.
    keep = set(names)
    return tuple(n for n in taxonomy.names if n in keep)


class KeywordShortlister:
    """Tags whose names or synonyms occur in the README; no restriction where none occurs."""

    def __init__(self, taxonomy: Taxonomy, k: int) -> None:
        self.taxonomy, self.k = taxonomy, k
        self.label = f"{_LABEL_PREFIX['keyword']}{k}"

    def shortlist(self, texts: Sequence[str]) -> list[tuple[str, ...] | None]:
        choices = tuple(self.taxonomy.names)
        result: list[tuple[str, ...] | None] = []
        for text in texts:
            found = keyword_tags(text, choices, limit=self.k)
            result.append(_in_taxonomy_order(self.taxonomy, found) if found else None)
        return result


class EmbeddingShortlister:
    """The K tags whose descriptions are nearest the README in MiniLM's embedding space."""

    def __init__(self, taxonomy: Taxonomy, k: int, model_path: str = "", *, keyword_first: bool = False) -> None:
        self.taxonomy, self.k, self.keyword_first = taxonomy, k, keyword_first
        self.ranker = TagRanker(taxonomy, model_path)
        self.label = f"{_LABEL_PREFIX['hybrid' if keyword_first else 'embedding']}{k}"

    def shortlist(self, texts: Sequence[str]) -> list[tuple[str, ...] | None]:
        choices = tuple(self.taxonomy.names)
        result: list[tuple[str, ...] | None] = []
        for text, ranked in zip(texts, self.ranker.rank(texts, self.k), strict=True):
            # hybrid: the README's own words first, the nearest descriptions fill the rest.
            names = keyword_tags(text, choices, limit=self.k) if self.keyword_first else []
            for name, _ in ranked:
                if len(names) >= self.k:
                    break
                if name not in names:
                    names.append(name)
            result.append(_in_taxonomy_order(self.taxonomy, names))
        return result


def create_shortlister(mode: str, taxonomy: Taxonomy, k: int, model_path: str = "") -> Shortlister | None:
    """The shortlister for ``mode`` (None for ``none``); embedding models load here, once."""
    if k < 1:
        raise ConfigError(f"shortlist size must be at least 1, got {k}")
    match mode:
        case "none":
            return None
        case "keyword":
            return KeywordShortlister(taxonomy, k)
        case "embedding":
            return EmbeddingShortlister(taxonomy, k, model_path)
        case "hybrid":
            return EmbeddingShortlister(taxonomy, k, model_path, keyword_first=True)
    raise ConfigError(f"unknown shortlist mode {mode!r}: choose one of {', '.join(SHORTLIST_MODES)}")
