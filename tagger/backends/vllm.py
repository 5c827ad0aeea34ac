"""GPU inference with vLLM: one batched ``LLM.chat`` per batch, answers constrained to the JSON schema.

Automatic prefix caching keeps the KV blocks of the fixed system message, which is the same for
every README, so it is computed once per worker; each request then costs its README and answer.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

from tagger.answer import answer_schema
from tagger.backends import Generation
from tagger.errors import BackendOutOfMemory, ConfigError, PermanentError
from tagger.prompt import Prompt
from tagger.settings import Settings

DEFAULT_MODEL = "openbmb/MiniCPM4-8B"
SEED = 0


def _is_cuda_oom(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (by class name, so torch need not be imported here), also when wrapped."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


class VLLMTagger:
    name = "vllm"

    def __init__(self, model: str = DEFAULT_MODEL, *, context_tokens: int = 4096, max_new_tokens: int = 48) -> None:
        try:
            import vllm
            from vllm.sampling_params import StructuredOutputsParams
        except ImportError as exc:
            raise ConfigError("the vllm backend needs the 'vllm' extra (vllm>=0.11)") from exc
        self.model = model
        self.max_new_tokens = max_new_tokens
        self._sampling_params_class = vllm.SamplingParams
        self._structured_class = StructuredOutputsParams
        self._params: dict[tuple[str, ...], Any] = {}
        try:
            self._llm: Any = vllm.LLM(
                model=model,
                trust_remote_code=True,
                enable_prefix_caching=True,
                max_model_len=context_tokens,
                seed=SEED,
            )
        except Exception as exc:
            if _is_cuda_oom(exc):
                raise BackendOutOfMemory(f"cannot load {model}: CUDA out of memory") from exc
            raise

    @classmethod
    def from_settings(cls, settings: Settings) -> VLLMTagger:
        return cls(
            settings.model or DEFAULT_MODEL,
            context_tokens=settings.context_tokens,
            max_new_tokens=settings.max_new_tokens,
        )

    def _sampling_params(self, choices: tuple[str, ...]) -> Any:
        params = self._params.get(choices)
        if params is None:
            params = self._sampling_params_class(
                temperature=0.0,
                max_tokens=self.max_new_tokens,
                structured_outputs=self._structured_class(json=answer_schema(choices)),
            )
            if len(self._params) >= 128:
                self._params.clear()
            self._params[choices] = params
        return params

    def generate(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        if not prompts:
            return []
        try:
            return self._chat(prompts)
        except ValueError as exc:
            # vLLM validates every prompt before it runs any (a prompt longer than max_model_len,
            # say) and rejects the whole call: find the culprits one by one, run the rest.
            if len(prompts) == 1:
                return [PermanentError(f"vLLM rejected the prompt: {exc}")]
        results: list[Generation | Exception] = []
        for prompt in prompts:
            try:
                results.extend(self._chat([prompt]))
            except ValueError as exc:
                results.append(PermanentError(f"vLLM rejected the prompt: {exc}"))
        return results

    def _chat(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        conversations = [
            [{"role": "system", "content": p.system}, {"role": "user", "content": p.user}] for p in prompts
        ]
        params = [self._sampling_params(p.choices) for p in prompts]
        try:
            outputs = self._llm.chat(conversations, sampling_params=params, use_tqdm=False, add_generation_prompt=True)
        except Exception as exc:
            if _is_cuda_oom(exc):
                raise BackendOutOfMemory(f"CUDA out of memory on a batch of {len(prompts)}") from exc
            raise
        results: list[Generation | Exception] = []
        for output in outputs:
            prompt_tokens = len(output.prompt_token_ids or ())
            cached = getattr(output, "num_cached_tokens", None)
            evaluated = prompt_tokens - cached if isinstance(cached, int) else prompt_tokens
            results.append(Generation(output.outputs[0].text, prompt_tokens, max(0, evaluated)))
        return results

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
            del llm
            gc.collect()
