"""The fleet: K real `tagger worker` processes whose model sleeps as a GPU would (170 repos/s each, one
batch in the model at a time, no CPU spent as the model), against one PostgreSQL and one Redis.

For each K: aggregate repos/s against K × the per-worker rate, and the CPU PostgreSQL (the backends of
the benchmark's database) and Redis (a private server) spend per repo, measured over a steady window
from /proc. Hence how many such workers one core of PostgreSQL + Redis serves. Every batch re-tags
repos that already have a result (archive to history, then replace): a fleet's steady state after a
change of model. Then one batch is replayed in this process with every statement and round trip
counted: what a batch costs PostgreSQL, and Redis's commands per batch from INFO commandstats.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from db.engine import get_engine, transaction
from db.runs import list_runs
from producer.enqueue import RunSpec, Sender, current_configuration
from tagger.backends import Generation
from tagger.prompt import Prompt
from tagger.settings import Settings
from workers.batch import process_batch
from workers.runtime import Runtime

from . import ROOT, TAGGER, bench_env, proc_cpu_s, stop, wait_for, worker
from .bulk import IndexShape, load_index, repo_id

GPU_REPOS_PER_S = 170.0  # MiniCPM4-8B on one H100, on paper (bench/gpu.py)
BATCH = 128
BACKEND = "bench.fleet:factory"
MODEL_PREFIX = "gpu-sleep@"  # TAGGER_MODEL=gpu-sleep@170: the sleeping model's repos/s
ANSWER = '{"tags": ["cli"]}'
FULL_KS = (1, 2, 4, 8, 16, 32)
QUICK_KS = (1, 2, 4, 8)


class SleepingGPU:
    """A model that costs no CPU: each batch sleeps len(batch) / rate seconds, one batch at a time per
    process (the engine's model lock, and this one for a backend called from elsewhere)."""

    name = "gpu-sleep"

    def __init__(self, repos_per_s: float) -> None:
        self.repos_per_s = repos_per_s
        self.model = f"{MODEL_PREFIX}{repos_per_s:g}"
        self._lock = threading.Lock()

    def generate(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        with self._lock:
            time.sleep(len(prompts) / self.repos_per_s)
        return [Generation(ANSWER) for _ in prompts]

    def close(self) -> None:
        pass


def factory(settings: Settings) -> SleepingGPU:
    """TAGGER_BACKEND=bench.fleet:factory, TAGGER_MODEL=gpu-sleep@RATE (repos/s; default 170)."""
    model = settings.model or ""
    return SleepingGPU(float(model.removeprefix(MODEL_PREFIX)) if model.startswith(MODEL_PREFIX) else GPU_REPOS_PER_S)


# --- the arithmetic ---------------------------------------------------------------------------------


def ideal_repos_per_s(workers: int, per_worker: float = GPU_REPOS_PER_S) -> float:
    return workers * per_worker


def efficiency(repos_per_s: float, workers: int, per_worker: float = GPU_REPOS_PER_S) -> float:
    """The fleet's rate as a fraction of K workers that never wait on anything but their GPU."""
    return repos_per_s / ideal_repos_per_s(workers, per_worker)


def workers_per_core(cpu_ms_per_repo: float, per_worker: float = GPU_REPOS_PER_S) -> float:
    """Workers of ``per_worker`` repos/s that one core (1,000 ms of CPU a second) serves at that cost."""
    return math.inf if cpu_ms_per_repo <= 0 else 1000.0 / (cpu_ms_per_repo * per_worker)


def repos_for(workers: int, seconds: float, per_worker: float = GPU_REPOS_PER_S, batch: int = BATCH) -> int:
    """Repos that keep ``workers`` busy for ``seconds``, in whole batches (at least one per worker)."""
    batches = max(workers, math.ceil(workers * per_worker * seconds / batch))
    return batches * batch


# --- measuring ---------------------------------------------------------------------------------------


@dataclass
class FleetPoint:
    workers: int
    repos: float  # repos tagged within the window: the steady rate (steady_rate) × the window
    window_s: float
    pg_cpu_s: float  # the benchmark database's backends
    redis_cpu_s: float
    pg_all_cpu_s: float  # every postgres process of the server (other users' too: an upper bound)
    workers_cpu_s: float
    load: float
    per_worker: float = GPU_REPOS_PER_S
    pg_stats: dict[str, int] = field(default_factory=dict)  # pg_stat_database deltas in the window
    redis_calls: dict[str, int] = field(default_factory=dict)  # INFO commandstats calls in the window
    batches_written: int = 0

    @property
    def repos_per_s(self) -> float:
        return self.repos / self.window_s if self.window_s else 0.0

    @property
    def efficiency(self) -> float:
        return efficiency(self.repos_per_s, self.workers, self.per_worker)

    @property
    def batches(self) -> float:
        return self.repos / BATCH

    def ms_per_repo(self, cpu_s: float) -> float:
        return cpu_s * 1000 / self.repos if self.repos else math.nan


def _cpu_of(pids: Sequence[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = proc_cpu_s(pid)
        except OSError:  # gone meanwhile
            continue
    return out


def _postgres_pids() -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if text[text.index("(") + 1 : text.rindex(")")] == "postgres":
            pids.append(int(stat.parent.name))
    return pids


class Probe:
    """CPU of the database's backends, of Redis, of every postgres process and of the workers, with the
    database's and Redis's own counters, read at the start and the end of a window."""

    def __init__(self, url: str, redis_url: str, worker_pids: Sequence[int]) -> None:
        self.url = url
        self.redis = redis.Redis.from_url(redis_url)
        self.redis_pid = int(self.redis.info("server")["process_id"])
        self.worker_pids = list(worker_pids)

    def _backends(self) -> list[int]:
        with transaction(self.url) as conn:
            return list(conn.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )).scalars())

    def _pg_stats(self) -> dict[str, int]:
        with transaction(self.url) as conn:
            row = conn.execute(sa.text(
                "SELECT xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated, "
                "tup_deleted, blks_hit, blks_read FROM pg_stat_database WHERE datname = current_database()"
            )).mappings().one()
            return {k: int(v) for k, v in row.items()}

    def read(self) -> dict[str, Any]:
        return {"backends": _cpu_of(self._backends()), "redis": proc_cpu_s(self.redis_pid),
                "pg_all": sum(_cpu_of(_postgres_pids()).values()), "workers": sum(_cpu_of(self.worker_pids).values()),
                "pg_stats": self._pg_stats(), "time": time.time()}

    def reset_redis_stats(self) -> None:
        self.redis.config_resetstat()

    def redis_calls(self) -> dict[str, int]:
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in self.redis.info("commandstats").items()}


def batch_times(log_path: Path, since: float, until: float) -> list[tuple[float, int]]:
    """(time, repos) of each batch a worker logged as tagged (`batch_tagged`, once its write committed)
    within [since, until)."""
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"batch_tagged"' not in line:
            continue
        try:
            event = json.loads(line)
            at = datetime.fromisoformat(event["timestamp"]).timestamp()
        except (ValueError, KeyError):
            continue
        if since <= at < until:
            out.append((at, int(event.get("tagged", 0))))
    return sorted(out)


def steady_rate(writes: Sequence[tuple[float, int]]) -> float:
    """One worker's repos/s from its batches' times: the repos of every batch after the first, over the
    time from the first to the last. Counting whole batches in a fixed window would be off by up to a
    batch (12 % of one worker's rate over 6 s); this is exact for a worker that is never starved."""
    if len(writes) < 2 or writes[-1][0] <= writes[0][0]:
        return 0.0
    return sum(n for _, n in writes[1:]) / (writes[-1][0] - writes[0][0])


def _results_of(url: str, run_id: int) -> int:
    with transaction(url) as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM results WHERE run_id = :run"),
                                {"run": run_id}).scalar_one())


def _newest_run(url: str) -> int:
    with transaction(url) as conn:
        runs = list_runs(conn, 1)
    return runs[0].id if runs else 0


def measure_point(settings: Settings, workers: Sequence[subprocess.Popen[bytes]], ids: Sequence[str], tmp: Path,
                  warm_s: float, window_s: float, timeout: float = 900) -> FleetPoint:
    """`tagger enqueue --file` of ``ids`` (a subprocess, as an operator runs it) while the workers drain;
    the figures are taken over [start + warm_s, start + warm_s + window_s]."""
    url = settings.database_url
    probe = Probe(url, settings.broker_url, [w.pid for w in workers])
    ids_file = tmp / f"ids-{len(workers)}.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    before = _newest_run(url)
    started = time.time()
    producer = subprocess.Popen([*TAGGER, "enqueue", "--file", str(ids_file), "--label", f"fleet K={len(workers)}"],
                                env=bench_env(settings), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
    try:
        run_id = wait_for(lambda: (_newest_run(url) > before) and _newest_run(url), 120, "the fleet's run")
        time.sleep(max(0.0, started + warm_s - time.time()))
        probe.reset_redis_stats()
        first = probe.read()
        time.sleep(window_s)
        last = probe.read()
        calls = probe.redis_calls()
        wait_for(lambda: _results_of(url, run_id) >= len(ids), timeout, f"{len(ids)} results of run {run_id}",
                 interval=0.5)
        _, err = producer.communicate(timeout=60)
        if producer.returncode != 0:
            raise RuntimeError(f"tagger enqueue exited {producer.returncode}: {err.decode()[-2000:]}")
    finally:
        stop(producer)
    window = last["time"] - first["time"]
    # The fleet's rate is the sum of each worker's own: their batches interleave, and the span from the
    # fleet's first write to its last would be a biased clock for K periodic streams.
    per_worker = [batch_times(w.log_path, first["time"], last["time"]) for w in workers]  # type: ignore[attr-defined]
    rate = sum(steady_rate(times) for times in per_worker)
    backends = sum(cpu - first["backends"].get(pid, 0.0) for pid, cpu in last["backends"].items())
    stats = {k: last["pg_stats"][k] - first["pg_stats"][k] for k in first["pg_stats"]}
    return FleetPoint(len(workers), rate * window, window, backends, last["redis"] - first["redis"],
                      last["pg_all"] - first["pg_all"], last["workers"] - first["workers"], os.getloadavg()[0],
                      pg_stats=stats, redis_calls=calls, batches_written=sum(len(t) for t in per_worker))


def fleet_settings(settings: Settings, per_worker: float = GPU_REPOS_PER_S) -> Settings:
    return settings.model_copy(update={"backend": BACKEND, "model": f"{MODEL_PREFIX}{per_worker:g}", "scoring": "off",
                                       "shortlist": "none", "batch_size": BATCH,
                                       "queue": f"bench-fleet-{uuid.uuid4().hex[:8]}"})


@contextmanager
def fleet(settings: Settings, tmp: Path) -> Iterator[Callable[[int], list[subprocess.Popen[bytes]]]]:
    """``grow(k)``: the fleet with ``k`` workers (started as needed, kept between points), all stopped after."""
    with ExitStack() as stack:
        running: list[subprocess.Popen[bytes]] = []

        def grow(k: int) -> list[subprocess.Popen[bytes]]:
            while len(running) < k:
                n = len(running)
                running.append(stack.enter_context(worker(settings, tmp, timeout=600,
                                                          args=("--hostname", f"fleet{n}@%h"))))
            return running[:k]

        yield grow


def seed(settings: Settings, repos: int) -> list[str]:
    """``repos`` repos, each with a result: every batch the fleet tags then re-tags (archive + replace)."""
    load_index(settings.database_url, IndexShape(repos, prefix="f", readme_bytes=4000, canary_every=0,
                                                 dead_every=0),
               current_configuration(settings).as_dict(), started_by="bench-fleet")
    return [repo_id("f", i) for i in range(repos)]


# --- one batch, counted ------------------------------------------------------------------------------


@dataclass
class BatchCost:
    """What one batch of BATCH re-tags costs PostgreSQL, as the producer and a worker issue it."""

    producer: Counter[str]
    worker: Counter[str]

    @staticmethod
    def round_trips(counts: Counter[str]) -> int:
        return sum(n for kind, n in counts.items() if kind in ("ping", "begin", "commit") or kind.startswith("sql:"))


def _first_words(statement: str) -> str:
    words = " ".join(statement.split()).split(" ")
    head = " ".join(words[:3])
    for keyword in ("FROM runs", "FROM repos", "INTO results", "INTO jobs", "INTO result_history", "UPDATE runs",
                    "FROM dead_letters", "FOR KEY SHARE", "FOR UPDATE", "pg_advisory_xact_lock_shared"):
        if keyword.lower() in " ".join(words).lower():
            head += f" …{keyword}"
    return head[:80]


def _autocommit(conn: Any) -> bool:
    return bool(conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT")


@contextmanager
def counting(url: str) -> Iterator[Counter[str]]:
    """Every statement, BEGIN, COMMIT and pool checkout (a pre-ping: one round trip) on ``url``'s engine."""
    engine = get_engine(url)
    counts: Counter[str] = Counter()

    def statement(conn: Any, cursor: Any, text: str, *args: Any) -> None:
        counts[f"sql: {_first_words(text)}"] += 1

    listeners: list[tuple[Any, str, Callable[..., None]]] = [
        (engine, "before_cursor_execute", statement),
        # A connection in autocommit sends no BEGIN or COMMIT (SQLAlchemy's events fire all the same).
        (engine, "begin", lambda conn: None if _autocommit(conn) else counts.update(["begin"])),
        (engine, "commit", lambda conn: None if _autocommit(conn) else counts.update(["commit"])),
        (engine.pool, "checkout", lambda *args: counts.update(["ping"])
         if getattr(engine.pool, "_pre_ping", False) else None),
    ]
    for target, name, fn in listeners:
        sa.event.listen(target, name, fn)
    try:
        yield counts
    finally:
        for target, name, fn in listeners:
            sa.event.remove(target, name, fn)


def batch_cost(settings: Settings, ids: Sequence[str]) -> BatchCost:
    """One batch of ``ids`` through the producer's Sender and the worker's process_batch, in this process,
    with the sleeping model at no delay: every statement and round trip each side sends PostgreSQL."""
    runtime = Runtime.start(settings, SleepingGPU(1e9))
    sender = Sender(settings, run=RunSpec("bench-fleet"), selection="ids")
    # A first batch records the run, checks the queue's depth, and lets the worker learn its run: once
    # per run, not per batch. The second is counted.
    sender.send(list(ids[:1]))
    process_batch(runtime, list(ids[:1]), str(uuid.uuid4()), sender.report.run_id)
    with counting(settings.database_url) as producer:
        sender.send(list(ids))
    with counting(settings.database_url) as worker_side:
        process_batch(runtime, list(ids), str(uuid.uuid4()), sender.report.run_id)
    client = redis.Redis.from_url(settings.broker_url)
    client.delete(settings.queue)
    return BatchCost(producer, worker_side)
