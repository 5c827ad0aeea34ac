"""Unit tests (no services, no model): the vLLM engine arguments the settings make, the .env.example
profiles, and the reaper that ends a dead worker's engine processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tagger.backends.reaper import start_time
from tagger.backends.vllm import STRUCTURED_OUTPUTS, engine_args
from tagger.settings import Settings
from tests.support.processes import wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_defaults_reserve_a_small_share_and_run_eager() -> None:
    args = engine_args(Settings(backend="vllm"), "/models/x", on_cpu=True)
    assert args["gpu_memory_utilization"] == 0.15 and args["enforce_eager"] is True
    assert args["max_model_len"] == 4096 and args["enable_prefix_caching"] is True
    assert args["structured_outputs_config"] == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert "speculative_config" not in args and "quantization" not in args and "max_num_batched_tokens" not in args
    gpu = engine_args(Settings(backend="vllm"), "/models/x", on_cpu=False)
    assert gpu["gpu_memory_utilization"] == 0.9 and gpu["enforce_eager"] is False


def test_minicpm4_settings_as_its_readme_passes_them() -> None:
    settings = Settings(
        backend="vllm", model="openbmb/MiniCPM4-8B-marlin-vLLM", vllm_dtype="bfloat16",
        vllm_gpu_memory_utilization=0.8, vllm_max_num_batched_tokens=32768, vllm_max_model_len=32768,
        vllm_speculative_model="openbmb/MiniCPM4-8B-marlin-Eagle-vLLM", vllm_num_speculative_tokens=2,
        vllm_quantization="gptq_marlin", vllm_enforce_eager=True,
    )
    args = engine_args(settings, settings.model, on_cpu=False)
    assert args == {
        "model": "openbmb/MiniCPM4-8B-marlin-vLLM", "trust_remote_code": True, "dtype": "bfloat16",
        "gpu_memory_utilization": 0.8, "max_model_len": 32768, "enforce_eager": True, "enable_prefix_caching": True,
        "seed": 0, "structured_outputs_config": STRUCTURED_OUTPUTS, "max_num_batched_tokens": 32768,
        "quantization": "gptq_marlin",
        "speculative_config": {"method": "eagle", "model": "openbmb/MiniCPM4-8B-marlin-Eagle-vLLM",
                               "num_speculative_tokens": 2, "max_model_len": 32768},
    }


def test_env_example_profiles_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TAGGER_ line of .env.example, commented out or not, is a value the settings accept."""
    lines = re.findall(r"^#?\s*(TAGGER_[A-Z0-9_]+)=(\S*)", (ROOT / ".env.example").read_text(), re.MULTILINE)
    names = {name for name, _ in lines}
    assert {"TAGGER_VLLM_SPECULATIVE_MODEL", "TAGGER_VLLM_GPU_MEMORY_UTILIZATION", "TAGGER_VLLM_DTYPE",
            "TAGGER_VLLM_MAX_NUM_BATCHED_TOKENS", "TAGGER_OPENAI_ADD_SPECIAL_TOKENS"} <= names
    models = {value for name, value in lines if name == "TAGGER_MODEL"}
    assert {"openbmb/MiniCPM4-8B", "openbmb/MiniCPM4-0.5B", "openbmb/MiniCPM4-8B-marlin-vLLM"} <= models
    for name, value in lines:
        monkeypatch.setenv(name, value)
        Settings()  # raises on a value the settings refuse
        monkeypatch.delenv(name)


REAPED_CHILD = """
import subprocess, sys, time
from tagger.backends.reaper import Reaper
child = subprocess.Popen(["sleep", "600"])
reaper = Reaper([child.pid], grace_s=2)
print(child.pid, flush=True)
time.sleep(600)
"""


def test_reaper_ends_the_processes_of_a_killed_parent() -> None:
    """The parent (standing in for a worker) is SIGKILLed: its child (the engine) is ended by the reaper."""
    parent = subprocess.Popen([sys.executable, "-c", REAPED_CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert start_time(child) is not None
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        killed = time.monotonic()
        wait_until(lambda: start_time(child) is None, timeout=20, what="the orphan ended by the reaper")
        assert time.monotonic() - killed < 5  # sleep dies at the SIGTERM: no grace period needed
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout:
            parent.stdout.close()


def test_reaper_leaves_processes_of_a_live_parent_alone_and_exits_on_close() -> None:
    from tagger.backends.reaper import Reaper

    child = subprocess.Popen(["sleep", "600"])
    reaper = Reaper([child.pid], grace_s=1)
    try:
        assert reaper.watched == 1 and reaper.process is not None
        assert child.poll() is None and reaper.process.poll() is None
        child.terminate()
        child.wait()
        reaper.close()  # the child is gone: nothing to end, the reaper exits
        assert reaper.process is None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_structured_outputs_flag_matches_vllm() -> None:
    """The engine flag names we pass exist in the installed vLLM (a renamed one would be refused at load)."""
    pytest.importorskip("vllm")
    from vllm.config import StructuredOutputsConfig

    config = StructuredOutputsConfig(**STRUCTURED_OUTPUTS)
    assert json.loads(json.dumps({"disable_any_whitespace": config.disable_any_whitespace})) == {
        "disable_any_whitespace": True
    }
