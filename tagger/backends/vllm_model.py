"""The model directory vLLM loads when no TAGGER_MODEL is given: the bundled SmolLM2-135M GGUF,
converted once by transformers into safetensors in a versioned cache directory.

vLLM cannot load that GGUF itself (it reads the file as a JSON config), and a machine without a model
hub must still run offline. The conversion takes ~25 s on 2 cores; every later start finds the
directory. Several workers starting at once convert it once: the first holds a file lock, builds the
directory under a temporary name and renames it into place, the others wait on the lock and find it.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import importlib.metadata
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

from tagger.backends.llamacpp import BUNDLED_DISTRIBUTION, bundled_gguf_path
from tagger.errors import ConfigError

log = structlog.get_logger("tagger.backends.vllm")

# Bump when the conversion changes: older directories are then left alone and a new one is built.
CONVERSION_VERSION = 1
# transformers dequantizes the Q4_1 weights; bfloat16 halves the directory (and vLLM's load) against
# float32 and runs on the CPU's AVX-512 BF16 as on a GPU.
CONVERTED_DTYPE = "bfloat16"
_COMPLETE = "repo-tagger-converted.json"  # written last, before the rename: a directory without it is not ours


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "repo-tagger"


def bundled_model_dir(cache_dir: str | Path = "") -> Path:
    """The converted bundled model, built on first use. Safe to call from many processes at once."""
    gguf = Path(bundled_gguf_path())
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        version = importlib.metadata.version(BUNDLED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    target = root / f"{gguf.stem}-{BUNDLED_DISTRIBUTION}-{version}-{CONVERTED_DTYPE}-v{CONVERSION_VERSION}"
    if (target / _COMPLETE).is_file():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the model cache {root}: {exc} (set TAGGER_MODEL_CACHE_DIR)") from exc
    with _locked(root / f".{target.name}.lock"):
        if (target / _COMPLETE).is_file():  # another worker converted it while we waited
            return target
        if target.exists():  # a directory someone else left there: never ours to delete
            raise ConfigError(f"{target} exists but is not a finished conversion; remove it")
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        try:
            seconds = _convert(gguf, work)
            (work / _COMPLETE).write_text(
                f'{{"gguf": "{gguf.name}", "version": "{version}", "conversion": {CONVERSION_VERSION}}}\n',
                encoding="utf-8",
            )
            work.chmod(0o755)  # mkdtemp made it private; the cache may serve workers of other users
            os.rename(work, target)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        log.info("bundled_model_converted", gguf=str(gguf), directory=str(target), seconds=round(seconds, 1))
    return target


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(gguf: Path, out: Path) -> float:
    """GGUF → safetensors model directory with tokenizer and chat template; returns the seconds it took.

    The model transformers builds from a GGUF refuses ``save_pretrained`` (it counts as quantized), so
    a fresh model object made from its config takes the dequantized weights and is saved instead."""
    started = time.perf_counter()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ConfigError("converting the bundled model needs the 'vllm-cpu' extra (transformers, torch)") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:  # transformers names the missing piece: gguf, accelerate
        raise ConfigError(f"cannot read {gguf}: {exc} (install the 'vllm-cpu' extra)") from exc
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):  # the weights are dequantized: vLLM would look for a GGUF
        del config.quantization_config
    config.dtype = getattr(torch, CONVERTED_DTYPE)
    fresh = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, CONVERTED_DTYPE))
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight is the embedding matrix, absent from the GGUF's tensors.
    missing = [name for name in missing if not (name == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ConfigError(f"converting {gguf.name}: missing weights {missing[:5]}, unexpected {unexpected[:5]}")
    fresh.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{gguf.name} carries no chat template")
    del loaded, fresh
    return time.perf_counter() - started
