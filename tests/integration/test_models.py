"""Real models in this process (no services): llama.cpp interrupted in a worker thread, MiniLM shortlisting."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tagger.backends.embedding import EmbeddingTagger
from tagger.backends.llamacpp import LlamaCppTagger
from tagger.engine import Tagged, TaggingEngine
from tagger.errors import BackendTimeout
from tagger.settings import Settings
from tagger.shortlist import EmbeddingShortlister
from tagger.taxonomy import Taxonomy
from tests.support.data import READMES

TAXONOMY = Taxonomy.load()
READMES_TEXT = [path.read_text(encoding="utf-8") for path in sorted(READMES.glob("*.md"))[:4]]


def _in_a_thread(fn, *args):
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


@pytest.mark.slow
def test_llamacpp_in_a_worker_thread_is_interrupted_and_works_afterwards():
    """The threads pool's case end to end: the limit reaches llama-cpp-python's decoding loop from a
    watchdog, the backend resets its KV cache, and the next call tags normally."""
    pytest.importorskip("llama_cpp")
    # Scoring off: the bundled SmolLM2's profile gives the model no weight, and the engine would not ask it.
    settings = Settings(backend="llamacpp", scoring="off")
    backend = LlamaCppTagger.from_settings(settings)
    try:
        engine = TaggingEngine.from_settings(backend, Taxonomy.load(settings.taxonomy_file), settings)
        readme = (READMES / "7462.md").read_text(encoding="utf-8")
        engine.timeout_s = 0.2  # the fixed prompt's first evaluation alone takes longer
        with pytest.raises(BackendTimeout):
            _in_a_thread(engine.tag, [readme])
        engine.timeout_s = 0
        (tagged,) = _in_a_thread(engine.tag, [readme])
        assert isinstance(tagged, Tagged) and 1 <= len(tagged.tags) <= 3
    finally:
        backend.close()


@pytest.mark.slow
def test_embedding_backend_and_shortlist() -> None:
    pytest.importorskip("sentence_transformers")
    shortlister = EmbeddingShortlister(TAXONOMY, 5)
    engine = TaggingEngine(EmbeddingTagger(TAXONOMY), TAXONOMY, shortlister=shortlister)
    prompt = engine.build_prompt(READMES_TEXT[0])
    assert len(prompt.choices) == 5 and set(prompt.choices) <= set(TAXONOMY.names)
    readmes = READMES_TEXT
    for readme, outcome in zip(readmes, engine.tag(readmes), strict=True):
        names = [t.name for t in outcome.tags]  # type: ignore[union-attr]
        assert 1 <= len(names) <= 3
        assert set(names) <= set(engine.build_prompt(readme).choices)  # answers stay within the shortlist
