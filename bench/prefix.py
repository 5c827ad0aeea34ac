"""Measurement 3, prefix reuse: the prompt tokens the backend actually evaluates per repo against the
prompt's length. The fixed part (chat-template head + instructions + taxonomy) comes first and is
token-identical for every README, so it should be evaluated once per worker, not once per repo.

Figures come from the model-path run (the worker logs ``prompt_tokens`` and ``evaluated_tokens`` of
each Generation on its debug ``repo_tagged`` line).

vLLM lays the prompt out the same way: ``LLM.chat`` renders [system: instructions + taxonomy] then
[user: README], with ``enable_prefix_caching=True``; the system part's KV blocks (full 16-token
blocks) are hashed and shared by every request in the batch and across batches, and vLLM reports
``num_cached_tokens`` per request, which the backend turns into ``evaluated_tokens``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .model_path import ModelPathRun


@dataclass
class PrefixFigures:
    prompt_tokens_per_repo: float
    evaluated_tokens_per_repo: float  # mean over every repo, the first (cold) one included
    evaluated_after_first: float  # mean over the repos after the first: the steady state
    first_evaluated: int
    fixed_tokens: int
    readme_tokens_per_repo: float
    answer_tokens_per_repo: float


def figures(run: ModelPathRun) -> PrefixFigures:
    nan = float("nan")
    prompts, evaluated = run.prompt_tokens, run.evaluated_tokens
    return PrefixFigures(
        prompt_tokens_per_repo=statistics.fmean(prompts) if prompts else nan,
        evaluated_tokens_per_repo=statistics.fmean(evaluated) if evaluated else nan,
        evaluated_after_first=statistics.fmean(evaluated[1:]) if len(evaluated) > 1 else nan,
        first_evaluated=evaluated[0] if evaluated else 0,
        fixed_tokens=run.fixed_tokens,
        readme_tokens_per_repo=statistics.fmean(run.readme_tokens) if run.readme_tokens else nan,
        answer_tokens_per_repo=statistics.fmean(run.answer_tokens) if run.answer_tokens else nan,
    )
