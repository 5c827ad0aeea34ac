"""Measurement 2, the model path: READMEs through the pipeline (Redis + one `tagger worker` with the
llamacpp backend + PostgreSQL) against a bare llama-cpp-python loop over the very same prompt tokens,
grammar and sampling settings. Both start with a loaded model and an empty KV cache; the pipeline's
clock runs from the first enqueue to the last result in PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db.engine import transaction
from db.results import iter_results
from producer.enqueue import enqueue_ids
from tagger.answer import answer_schema_json, parse_answer
from tagger.backends.llamacpp import SEED, LlamaCppTagger, bundled_gguf_path, cpu_count
from tagger.engine import TaggingEngine
from tagger.errors import TaggerError
from tagger.settings import Settings
from tagger.taxonomy import Taxonomy

from .overhead import totals, wait_for_results


@dataclass
class ModelRun:
    """A model path's pipeline against the bare engine on the same prompts (llama.cpp, vLLM)."""

    repos: int
    pipeline_s: float = 0.0
    bare_s: float = 0.0
    same_tags: int = 0
    prompt_tokens: list[int] = field(default_factory=list)  # per repo, from the worker's repo_tagged lines
    evaluated_tokens: list[int] = field(default_factory=list)
    answer_tokens: list[int] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.bare_s / self.pipeline_s if self.pipeline_s else float("nan")


@dataclass
class ModelPathRun(ModelRun):
    readme_tokens: list[int] = field(default_factory=list)  # the README part of each prompt
    fixed_tokens: int = 0  # the chat-template head + system message (instructions + taxonomy)


@dataclass
class Prompts:
    tokens: list[list[int]]  # what the backend feeds llama.cpp, per README
    choices: list[tuple[str, ...]]  # the answer's allowed tags (the shortlist, TAGGER_SHORTLIST), per README
    fixed_tokens: int
    readme_tokens: list[int]


def prompt_token_lists(settings: Settings, taxonomy: Taxonomy, readmes: Sequence[str]) -> Prompts:
    """The exact prompts the worker will build (the engine's cleaning, shortlist and prompt) as the
    exact tokens its backend feeds llama.cpp, with the fixed head's and each README part's length."""
    backend = LlamaCppTagger.from_settings(settings)
    try:
        engine = TaggingEngine.from_settings(backend, taxonomy, settings)
        prompts = [engine.build_prompt(r) for r in readmes]
        tokens = [backend.prompt_tokens(p) for p in prompts]
        frame = backend._frame(engine.prompts.system)
        head, tail = (len(frame[1]), len(frame[3])) if frame else (0, 0)
        return Prompts(tokens, [p.choices for p in prompts], head, [len(t) - head - tail for t in tokens])
    finally:
        backend.close()


def run_bare(settings: Settings, prompts: Prompts) -> tuple[float, list[str], list[int]]:
    """llama-cpp-python alone: one Llama, the same grammars (built on first use, as the backend
    does) and sampling, the prompts in order."""
    import llama_cpp

    threads = settings.llamacpp_threads or cpu_count()  # what the backend runs with
    llm = llama_cpp.Llama(model_path=settings.model or bundled_gguf_path(), n_ctx=settings.context_tokens,
                          n_threads=threads, n_threads_batch=threads, seed=SEED, verbose=False)
    grammars: dict[tuple[str, ...], Any] = {}
    texts: list[str] = []
    answer_tokens: list[int] = []
    try:
        started = time.perf_counter()
        for tokens, choices in zip(prompts.tokens, prompts.choices, strict=True):
            grammar = grammars.get(choices)
            if grammar is None:
                grammar = grammars[choices] = llama_cpp.LlamaGrammar.from_json_schema(answer_schema_json(choices),
                                                                                      verbose=False)
            out: Any = llm.create_completion(prompt=tokens, max_tokens=settings.max_new_tokens, temperature=0.0,
                                             repeat_penalty=1.0, seed=SEED, grammar=grammar, stream=False)
            texts.append(out["choices"][0]["text"])
            answer_tokens.append(int(out["usage"]["completion_tokens"]))
        return time.perf_counter() - started, texts, answer_tokens
    finally:
        llm.close()


def worker_token_counts(log_path: Path) -> dict[str, tuple[int, int]]:
    """repo id → (prompt tokens, evaluated tokens), from the worker's debug `repo_tagged` lines."""
    counts: dict[str, tuple[int, int]] = {}
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"repo_tagged"' not in line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        counts[record["repo_id"]] = (int(record.get("prompt_tokens", 0)), int(record.get("evaluated_tokens", 0)))
    return counts


def run_pipeline(settings: Settings, ids: Sequence[str], timeout: float) -> float:
    done_before = totals(settings.database_url).count
    started = time.time()
    enqueue_ids(settings, ids)
    return wait_for_results(settings.database_url, done_before + len(ids), started, timeout,
                            f"{len(ids)} llamacpp results")


def compare_tags(settings: Settings, taxonomy: Taxonomy, ids: Sequence[str], texts: Sequence[str]) -> int:
    """How many repos got the same tags from the pipeline as from the bare loop (greedy decoding)."""
    wanted = set(ids)
    with transaction(settings.database_url) as conn:
        stored = {repo_id: tag_ids for repo_id, tag_ids in iter_results(conn) if repo_id in wanted}
    same = 0
    for repo_id, text in zip(ids, texts, strict=True):
        try:
            bare = [t.id for t in parse_answer(text, taxonomy)]
        except TaggerError:
            bare = []
        same += stored.get(repo_id) == bare
    return same
