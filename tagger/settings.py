"""One typed settings object, fed by ``TAGGER_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tagger.backends import BACKENDS, is_plugin
from tagger.errors import ConfigError
from tagger.taxonomy import DEFAULT_TAXONOMY
from tagger.urls import masked, scrub

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
BROKER_SCHEMES = ("redis", "rediss", "unix", "sentinel")
DATABASE_DRIVERS = ("postgresql+psycopg",)
# The shortlist modes, named here and implemented in tagger.shortlist: reading the settings (every command
# does) loads none of the shortlists' code (keywords, embeddings, README cleaning).
ShortlistMode = Literal["none", "keyword", "embedding", "hybrid"]


class Settings(BaseModel):
    """The values given, over the ``TAGGER_*`` variables (named in any case), over the defaults. A plain
    model, not pydantic-settings': importing its sources (dotenv, cloud secrets, argparse...) was part of
    every command's start-up (BENCHMARKS.md)."""

    model_config = ConfigDict(extra="ignore", validate_default=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**(_environment() | values))

    database_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/tagger",
        description="SQLAlchemy URL of the index database (PostgreSQL; `tagger demo` starts its own when unset).",
    )
    broker_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Celery broker URL (Redis; `tagger demo` starts its own when unset)."
    )
    queue: str = Field("tagger", description="Name of the Celery queue the workers consume.")
    # signals: the best measured on a CPU (docs/quality.md); GPU workers set vllm (their LLM judges).
    backend: str = Field(
        "signals",
        description="Tagger backend: signals (no LLM: keywords + MiniLM, scored), llamacpp, openai, vllm, keyword, "
        "embedding, or 'package.module:factory' for your own.",
    )
    scoring: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Combine keyword, name and embedding signals with the backend's answer into one score per tag, "
        "weighted by the backend's calibration profile (tagger calibrate); auto: on except for the keyword and "
        "embedding baselines and your own backends.",
    )
    model: str = Field(
        "",
        description="Model for the backend (vllm: HF id or model directory, e.g. openbmb/MiniCPM4-8B; llamacpp: "
        "GGUF path; both default to the bundled SmolLM2-135M, which vllm converts once into "
        "TAGGER_MODEL_CACHE_DIR; openai: served model name).",
    )
    model_cache_dir: str = Field(
        "", description="Where models converted for vLLM are kept (default: $XDG_CACHE_HOME/repo-tagger, "
        "else ~/.cache/repo-tagger)."
    )
    openai_base_url: str = Field("http://127.0.0.1:8000/v1", description="Base URL of an OpenAI-compatible server.")
    openai_api_key: str = Field("not-needed", description="API key sent to the OpenAI-compatible server.")
    openai_add_special_tokens: bool | None = Field(
        None, description="Ask the server to add the tokenizer's special tokens (BOS) to the chat prompt: MiniCPM4 "
        "needs them and vLLM's chat endpoint leaves them out by default (empty: only to vLLM servers, told by "
        "/models)."
    )
    taxonomy_file: Path = Field(DEFAULT_TAXONOMY, description="Taxonomy JSON loaded by `tagger db upgrade`.")
    batch_size: int = Field(128, ge=1, le=10_000, description="Repo ids per task message (see BENCHMARKS.md).")
    # 128: the best measured for the bundled SmolLM2 and for the keyword backend (docs/quality.md); a
    # larger model may read more with profit: measure it with `tagger eval --budget`.
    readme_max_bytes: int = Field(
        1024 * 1024, ge=1024, description="`tagger import` stores at most this many bytes of each README (its "
        "head; the original size is kept): memory stays bounded whatever one README holds."
    )
    readme_token_budget: int = Field(128, ge=16, description="README tokens kept (the head) in each prompt.")
    prompt_descriptions: bool = Field(True, description="List each tag's one-line description in the prompt.")
    # keyword: the best configuration measured for the bundled SmolLM2 (docs/quality.md), and free.
    shortlist: ShortlistMode = Field(
        "keyword", description="Restrict each answer to the README's likeliest tags first: none, keyword, embedding "
        "(MiniLM; the 'embeddings' extra) or hybrid (keyword hits, then embedding)."
    )
    profiles_dir: Path | None = Field(
        None, description="Folder of calibration profiles (tagger calibrate --out), searched before the shipped ones."
    )
    shortlist_k: int = Field(8, ge=1, le=1000, description="Candidate tags kept by the shortlist.")
    tag_policy: Literal["precise", "balanced", "recall"] = Field(
        "balanced", description="Scored backends: fewer, surer tags (precise: tags shown publicly), a right tag for "
        "most repos with most tags right (balanced), or more tags (recall: a search index); each a calibrated cut "
        "(docs/quality.md). Results record it: a change makes them stale."
    )
    tag_threshold: float | None = Field(
        None, ge=0, le=1, description="Scored backends: your own point instead of the policy's: the second and third "
        "tags are kept when their score reaches it (see `tagger eval` for the curve; empty: the policy's)."
    )
    embedding_model: str = Field(
        "", description="sentence-transformers model directory (default: the bundled all-MiniLM-L6-v2)."
    )
    max_new_tokens: int = Field(48, ge=8, description="Token limit of the model's answer.")
    context_tokens: int = Field(4096, ge=512, description="Context window the llamacpp backend allocates.")
    llamacpp_threads: int = Field(
        0, ge=0, description="CPU threads of the llamacpp backend (0: one per core; lower it when workers share cores)."
    )
    # vLLM engine arguments, named as in MiniCPM4's README; 0 or "" leaves vLLM's own default.
    vllm_dtype: str = Field("auto", description="vllm: weight and activation dtype (auto, bfloat16, float16).")
    vllm_gpu_memory_utilization: float = Field(
        0.0, ge=0, le=1, description="vllm: share of GPU memory vLLM reserves for weights and KV cache; on a CPU, the "
        "share of RAM (0: 0.9 on a GPU, 0.15 on a CPU, where vLLM refuses to start if that much is not free)."
    )
    vllm_max_num_batched_tokens: int = Field(
        0, ge=0, description="vllm: tokens scheduled per engine step (0: vLLM's default; MiniCPM4's README: 32768)."
    )
    vllm_max_model_len: int = Field(
        0, ge=0, description="vllm: context length (0: TAGGER_CONTEXT_TOKENS). Prompts longer fail alone."
    )
    vllm_enforce_eager: bool | None = Field(
        None, description="vllm: no CUDA graphs / torch.compile (empty: true on a CPU, where compiling costs "
        "minutes at start, false on a GPU)."
    )
    vllm_speculative_model: str = Field(
        "", description="vllm: draft model for speculative decoding, e.g. openbmb/MiniCPM4-8B-Eagle-vLLM (empty: none)."
    )
    vllm_speculative_method: str = Field("eagle", description="vllm: speculative decoding method of that model.")
    vllm_num_speculative_tokens: int = Field(2, ge=1, description="vllm: tokens the draft model proposes per step.")
    vllm_quantization: str = Field(
        "", description="vllm: quantization method (empty: read from the checkpoint, as for "
        "openbmb/MiniCPM4-8B-marlin-vLLM)."
    )
    vllm_trust_remote_code: bool = Field(True, description="vllm: run the model's own code (MiniCPM4 needs it).")
    backend_timeout_s: float = Field(600.0, gt=0, description="Wall-clock limit of one backend call.")
    max_attempts: int = Field(5, ge=1, description="Attempts before a failing repo is dead-lettered.")
    retry_base_s: float = Field(2.0, ge=0, description="First retry delay; doubles each attempt, with jitter.")
    retry_max_s: float = Field(300.0, ge=0, description="Cap on one retry delay.")
    # ge=1, not 60: the fault tests need a redelivery within seconds; production keeps the default.
    visibility_timeout_s: int = Field(
        7200, ge=1, description="Redis visibility timeout; must stay well above the longest batch."
    )
    queue_high_water: int = Field(200, ge=1, description="Producer pauses while the queue holds more batches.")
    sweep_older_than_s: int = Field(900, ge=1, description="Sweeper re-enqueues repos queued longer than this.")
    sweep_interval_s: int = Field(300, ge=1, description="Beat: seconds between sweeps.")
    refresh_interval_s: int = Field(3600, ge=1, description="Beat: seconds between stale refreshes.")
    beat_lock_ttl_s: int = Field(
        30, ge=2, description="Beat: the leader lock lapses this long after its holder stops renewing it; a "
        "standby `tagger beat` takes over then."
    )
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="`tagger worker`: serve this process's Prometheus counters and histograms "
        "on this port (/metrics, /healthz); 0: off. Each worker needs its own port per host."
    )
    worker_metrics_address: str = Field("127.0.0.1", description="`tagger worker`: interface of that server "
                                        "(0.0.0.0 in a container).")
    flower_user: str = Field("", description="`tagger flower`: basic-auth user (required unless --local-only).")
    flower_password: str = Field("", description="`tagger flower`: basic-auth password.")
    log_format: Literal["auto", "json", "console"] = Field("auto", description="Log lines: json, console, or auto.")
    log_level: str = Field("INFO", description=f"Log level: {', '.join(LOG_LEVELS)}.")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r}: choose one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        # Imported here, not at the top: SQLAlchemy is a fifth of a second that importing the settings need
        # not cost (reading them does: the default is checked too).
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
            _ = url.port  # a port that is not a number fails here, not at the first connection
        except (ArgumentError, ValueError):
            raise ValueError(
                f"{masked(value)!r} is not a database URL: expected e.g. postgresql+psycopg://USER@HOST:5432/tagger"
            ) from None
        if url.drivername == "postgresql":
            # SQLAlchemy's default driver for it is psycopg2, which we do not install: psycopg 3 is meant.
            return "postgresql+psycopg" + value[len("postgresql"):]
        if url.drivername not in DATABASE_DRIVERS:
            raise ValueError(
                f"{masked(value)!r}: unsupported database {url.drivername!r}: expected PostgreSQL "
                "(postgresql+psycopg://USER@HOST:5432/tagger)"
            )
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        scheme = value.partition("://")[0]
        if "://" not in value or scheme not in BROKER_SCHEMES:
            raise ValueError(f"{masked(value)!r} is not a Redis URL: expected e.g. redis://HOST:6379/0")
        if scheme in ("redis", "rediss"):
            parts = urlsplit(value)
            try:
                _ = parts.port
            except ValueError:
                raise ValueError(f"{masked(value)!r}: the port is not a number: expected e.g. "
                                 "redis://HOST:6379/0") from None
            # redis-py reads an unparsable db as db 0: a typo would silently share another database.
            db = parts.path.strip("/")
            if db and not db.isdigit():
                raise ValueError(f"{masked(value)!r}: the database {db!r} is not a number: expected e.g. "
                                 "redis://HOST:6379/0")
        return value

    @field_validator("vllm_enforce_eager", "openai_add_special_tokens", "tag_threshold", mode="before")
    @classmethod
    def _empty_means_auto(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in BACKENDS and not is_plugin(value):
            raise ValueError(f"unknown backend {value!r}: choose one of {', '.join(BACKENDS)} or 'module:factory'")
        return value


def _environment() -> dict[str, str]:
    variables = {name.lower(): value for name, value in os.environ.items()}
    return {field: variables[f"tagger_{field}"] for field in Settings.model_fields if f"tagger_{field}" in variables}


def load_settings(**overrides: Any) -> Settings:
    """Settings from ``TAGGER_*`` variables, with ``overrides`` (command-line options) on top, all checked
    alike; a bad value is a :class:`ConfigError` naming the variable, not a validation traceback."""
    try:
        settings = Settings()
        return Settings.model_validate(settings.model_dump() | overrides) if overrides else settings
    except ValidationError as exc:
        problems = "; ".join(
            f"TAGGER_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        # A validator's message may quote the value it refused: no URL's password may go with it.
        urls = [str(e["input"]) for e in exc.errors() if isinstance(e.get("input"), str) and "@" in e["input"]]
        raise ConfigError(f"invalid setting: {scrub(problems, *urls)}") from None
