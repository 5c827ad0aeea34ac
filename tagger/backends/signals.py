"""The default CPU backend: no language model at all. Tags come from the scoring signals alone
(keyword mentions by where they occur, the repo name, MiniLM similarity to each tag's description:
tagger/scoring.py), combined by the calibrated ``signals`` profile.

On the development set this beats every configuration of the bundled SmolLM2-135M, alone or as a
judge on top of the same signals (docs/quality.md), at a fraction of its cost: a CPU worker has no
reason to load an LLM. GPU workers keep their LLM as the judge (``vllm``, ``openai``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tagger.backends import Generation
from tagger.embeddings import DEFAULT_EMBEDDING_MODEL
from tagger.errors import ConfigError
from tagger.prompt import Prompt

if TYPE_CHECKING:
    from tagger.settings import Settings


class SignalsTagger:
    name = "signals"

    def __init__(self, model: str = DEFAULT_EMBEDDING_MODEL) -> None:
        self.model = model

    @classmethod
    def from_settings(cls, settings: Settings) -> SignalsTagger:
        return cls(signals_model(settings))

    @classmethod
    def recorded_model(cls, settings: Settings) -> str:
        return signals_model(settings)

    def generate(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        # Only reached with TAGGER_SCORING=off, or a profile that weighs a judge: this backend has none.
        error = ConfigError("the signals backend has no model to ask: its tags come from scoring (TAGGER_SCORING)")
        return [error for _ in prompts]

    def close(self) -> None:
        pass


def signals_model(settings: Settings) -> str:
    """What results record as the model: the embedding model the signals use."""
    path = settings.embedding_model
    return path.rstrip("/").rsplit("/", 1)[-1] if path else DEFAULT_EMBEDDING_MODEL
