"""Measurement 4, scale: enqueue a million ids with `tagger enqueue --all` into a private Redis
(producer peak RSS, Redis peak memory, enqueue rate, queue depth against its high-water mark), and a
worker's RSS sampled at intervals over a long run (it must stay flat)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field

import redis

from tagger.settings import Settings
from workers.contract import queue_depth

from . import ROOT, TAGGER, bench_env, proc_rss_kib, redis_info


def tiny_rows(prefix: str, n: int) -> Iterator[dict[str, str]]:
    """Repos whose READMEs are a line: enqueueing never reads them, and a million stay small."""
    for i in range(n):
        repo_id = f"{prefix}{i:07d}"
        yield {"id": repo_id, "name": "", "readme": f"# {repo_id}\nA small command-line tool.\n"}


@dataclass
class EnqueueRun:
    repos: int
    wall_s: float
    producer_peak_rss_mib: float
    redis_peak_mib: float
    redis_baseline_mib: float
    peak_depth: int
    high_water: int
    drained_messages: int

    @property
    def rate(self) -> float:
        return self.repos / self.wall_s


class Drainer(threading.Thread):
    """A consumer that throws messages away: it first lets the queue fill to its high-water mark, so
    the producer's backpressure engages, then drains as fast as Redis answers."""

    def __init__(self, url: str, queue: str, high_water: int) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.queue, self.high_water = queue, high_water
        self.stopping = threading.Event()
        self.drained = 0
        self.peak_depth = 0

    def run(self) -> None:
        holding = True
        while not self.stopping.is_set():
            depth = int(self.client.llen(self.queue))
            self.peak_depth = max(self.peak_depth, depth)
            if holding and depth < self.high_water:
                time.sleep(0.01)
                continue
            holding = False
            popped = self.client.rpop(self.queue, 500)
            if popped:
                self.drained += len(popped)
            else:
                time.sleep(0.005)


def run_enqueue(settings: Settings, repos: int, timeout: float = 3600) -> EnqueueRun:
    """`tagger enqueue --all` as its own process; its peak RSS is the kernel's VmHWM, read while it runs
    (rusage's ru_maxrss would count the benchmark process it was forked from)."""
    baseline = float(redis_info(settings.broker_url)["used_memory"]) / 2**20
    drainer = Drainer(settings.broker_url, settings.queue, settings.queue_high_water)
    drainer.start()
    started = time.perf_counter()
    proc = subprocess.Popen([*TAGGER, "enqueue", "--all"], env=bench_env(settings), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    peak_kib = 0
    while True:
        with suppress(OSError):
            peak_kib = max(peak_kib, proc_rss_kib(proc.pid, "VmHWM"))
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("tagger enqueue --all did not finish")
        time.sleep(0.02)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    _, err = proc.communicate()
    while queue_depth(settings.broker_url, settings.queue):
        time.sleep(0.01)
    drainer.stopping.set()
    drainer.join()
    if proc.returncode != 0:
        raise RuntimeError(f"tagger enqueue exited {proc.returncode}: {err.decode()[-2000:]}")
    info = redis_info(settings.broker_url)
    return EnqueueRun(repos, wall, peak_kib / 1024, float(info["used_memory_peak"]) / 2**20, baseline,
                      drainer.peak_depth, settings.queue_high_water, drainer.drained)


@dataclass
class RssSampler:
    """Samples a process's RSS (and a progress counter) every ``interval`` seconds, in a thread."""

    pid: int
    progress: Callable[[], int]
    interval: float = 1.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (seconds, RSS KiB, progress)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        try:
            rss = proc_rss_kib(self.pid)
            self.samples.append((time.monotonic() - self._started, rss, self.progress()))
        except (OSError, Exception):  # the worker exited, or the database blinked: skip this sample
            pass

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def growth(self) -> tuple[float, float, float]:
        """(RSS MiB once warm, RSS MiB at the end, growth): "warm" is the first sample after a tenth
        of the repos, so start-up allocations (caches, pools, the first batch) are not counted."""
        if not self.samples:
            return float("nan"), float("nan"), float("nan")
        final = self.samples[-1][2]
        warm = next((s for s in self.samples if s[2] >= final / 10 and s[2] > 0), self.samples[0])
        end = self.samples[-1]
        return warm[1] / 1024, end[1] / 1024, (end[1] - warm[1]) / warm[1]
