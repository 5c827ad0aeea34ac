"""Any OpenAI-compatible chat completions server: ``vllm serve``, SGLang, ``python -m llama_cpp.server``.

The answer is constrained with ``response_format`` (a JSON schema). The requests of a batch are sent
concurrently, so a server with continuous batching sees the whole batch at once; the fixed system
message comes first in every request, so servers with prefix caching compute it once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import httpx

from tagger.answer import answer_schema
from tagger.backends import Generation
from tagger.errors import (
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    MalformedOutput,
    PermanentError,
    TaggerError,
)
from tagger.prompt import Prompt
from tagger.settings import Settings

DEFAULT_CONCURRENCY = 8
CONNECT_TIMEOUT_S = 10.0

# How ``response_format`` carries the schema. OpenAI, vLLM and SGLang take "json_schema";
# llama-cpp-python's server only knows {"type": "json_object", "schema": ...} and answers 422 to
# the former, so a 400/422 for the first style switches the tagger to the second.
_STYLES = ("json_schema", "json_object")


def _response_format(style: str, choices: tuple[str, ...]) -> dict[str, Any]:
    schema = answer_schema(choices)
    if style == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "tags", "schema": schema, "strict": True}}
    return {"type": "json_object", "schema": schema}


class OpenAITagger:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        model: str = "",
        api_key: str = "",
        max_new_tokens: int = 48,
        timeout_s: float = 600.0,
        concurrency: int = DEFAULT_CONCURRENCY,
        add_special_tokens: bool | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"openai_base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.max_new_tokens = max_new_tokens
        self.concurrency = max(1, concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S)),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )
        self._style = _STYLES[0]
        self._style_lock = threading.Lock()
        # None until known: vLLM servers get add_special_tokens (see _detect_server).
        self.add_special_tokens = add_special_tokens
        try:
            listing: list[Any] | None = None
            if not model or add_special_tokens is None:
                try:
                    listing = self._served_models()
                except BackendUnavailable:
                    if not model:
                        raise
                    # A server that is down now is asked again on the first batch.
            self.model = model or _first_id(listing or [], self.base_url)
            if listing is not None and self.add_special_tokens is None:
                self.add_special_tokens = _is_vllm(listing)
        except BaseException:
            self._client.close()
            raise

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAITagger:
        return cls(
            settings.openai_base_url,
            model=settings.model,
            api_key=settings.openai_api_key,
            max_new_tokens=settings.max_new_tokens,
            timeout_s=settings.backend_timeout_s,
            add_special_tokens=settings.openai_add_special_tokens,
        )

    def _served_models(self) -> list[Any]:
        response = self._send("GET", "/models")
        self._raise_for_server(response)
        if response.status_code >= 400:
            raise ConfigError(f"GET {self.base_url}/models answered {response.status_code}: {response.text[:200]}")
        try:
            models = response.json()["data"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.base_url}/models is not a model list: {response.text[:200]!r}") from exc
        if not isinstance(models, list):
            raise ConfigError(f"{self.base_url}/models is not a model list: {response.text[:200]!r}")
        return models

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """One HTTP exchange; a server that cannot be reached or timed out is raised as a tagger error."""
        try:
            return self._client.request(method, path, json=body)
        except httpx.ConnectTimeout as exc:
            raise BackendUnavailable(f"cannot reach {self.base_url}: connect timed out") from exc
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"{self.base_url}{path} did not answer in time: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:  # connection refused or reset, protocol errors
            raise BackendUnavailable(f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}") from exc

    def _raise_for_server(self, response: httpx.Response) -> None:
        """Server errors and overload concern the whole batch: raised, not returned per prompt."""
        if response.status_code >= 500 or response.status_code == 429:
            raise BackendUnavailable(
                f"{response.request.method} {response.request.url} answered {response.status_code}: "
                f"{response.text[:200]}"
            )

    def generate(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        if not prompts:
            return []
        if self.add_special_tokens is None:
            listing = self._served_models()
            with self._style_lock:
                self.add_special_tokens = _is_vllm(listing)
        if len(prompts) == 1 or self.concurrency == 1:
            return [self._generate_one(p) for p in prompts]
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)), thread_name_prefix="openai")
        try:
            futures: list[Future[Generation | Exception]] = [pool.submit(self._generate_one, p) for p in prompts]
            wait(futures)
        finally:
            # On a timeout signal in this thread, do not wait for requests still in flight.
            pool.shutdown(wait=False, cancel_futures=True)
        results: list[Generation | Exception] = []
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error  # the server is down or timed out: the whole batch fails
            results.append(future.result())
        return results

    def _generate_one(self, prompt: Prompt) -> Generation | Exception:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "temperature": 0,
            "max_tokens": self.max_new_tokens,
        }
        if self.add_special_tokens:
            body["add_special_tokens"] = True
        style = self._style
        while True:
            body["response_format"] = _response_format(style, prompt.choices)
            response = self._send("POST", "/chat/completions", body)
            if style != _STYLES[-1] and _rejects_style(response):
                style = _STYLES[_STYLES.index(style) + 1]
                continue
            break
        self._raise_for_server(response)
        if response.status_code >= 400:
            return _client_error(response)
        with self._style_lock:
            self._style = style
        return _parse_completion(response)

    def close(self) -> None:
        self._client.close()


def _first_id(models: list[Any], base_url: str) -> str:
    try:
        return str(models[0]["id"])
    except (KeyError, IndexError, TypeError) as exc:
        raise ConfigError(f"{base_url}/models lists no model; set TAGGER_MODEL") from exc


def _is_vllm(models: list[Any]) -> bool:
    """vLLM's /models says ``"owned_by": "vllm"`` of every model it serves."""
    return any(isinstance(m, dict) and m.get("owned_by") == "vllm" for m in models)


def _rejects_style(response: httpx.Response) -> bool:
    """The server does not understand this way of passing the schema (as opposed to other errors).
    llama-cpp-python's server reports its request validation errors as 500."""
    text = response.text
    if response.status_code in (400, 422):
        return "response_format" in text
    return response.status_code == 500 and "response_format" in text and "json_object" in text


def _client_error(response: httpx.Response) -> TaggerError:
    message = f"{response.request.url} answered {response.status_code}: {response.text[:300]}"
    if response.status_code in (401, 403, 404):
        return ConfigError(message)  # wrong key, model or URL
    return PermanentError(message)  # this request cannot succeed (too long for the model, say)


def _parse_completion(response: httpx.Response) -> Generation | Exception:
    try:
        data = response.json()
        text = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return MalformedOutput(f"not a chat completion: {response.text[:200]!r}")
    if not isinstance(text, str):
        return MalformedOutput(f"no message content in {response.text[:200]!r}")
    usage = data.get("usage") or {}
    prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if not isinstance(prompt_tokens, int):
        return Generation(text)
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    evaluated = prompt_tokens - cached if isinstance(cached, int) else prompt_tokens
    return Generation(text, prompt_tokens=prompt_tokens, evaluated_tokens=max(0, evaluated))
