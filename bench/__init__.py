"""The benchmark suite behind `tagger bench`: one module per measurement, shared plumbing here.

Every measurement runs against services of its own so that it neither disturbs nor is disturbed by
anything else on the machine's PostgreSQL and Redis: a database created for the run (migrated with
``db.migrate.upgrade``, dropped after) and a private ``redis-server`` on a free port (tagger/servers.py; stopped after).
Figures on a shared machine are noisy; each comparison (pipeline vs raw, pipeline vs bare model)
is taken side by side in one run, so the ratios are what to read.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from db.engine import get_engine, transaction
from db.migrate import upgrade
from db.repos import upsert_repos
from tagger.keywords import phrases_by_tag
from tagger.samples import sample_rows
from tagger.servers import free_port as free_port  # the tests take their free ports from here too
from tagger.servers import redis_server
from tagger.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# Read at run time only, when present: real READMEs give real token counts.
DEV_SET = ROOT.parent / "shared" / "data" / "dev.jsonl"
TAGGER = [sys.executable, "-m", "cli"]
PAGE = 2000


@dataclass
class Row:
    """One line of the table: a measurement, its value and unit, and what it is compared against."""

    section: str
    name: str
    value: float | str
    unit: str = ""
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, section: str, name: str, value: float | str, unit: str = "", note: str = "",
            key: str | None = None) -> None:
        self.rows.append(Row(section, name, value, unit, note))
        if key:
            self.figures[key] = value


def fmt(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if value != value:  # NaN: not measured
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


# --- services of our own ----------------------------------------------------------------------


def admin_url(base_url: str) -> str:
    return sa.engine.make_url(base_url).set(database="postgres").render_as_string(hide_password=False)


@contextmanager
def bench_database(base_url: str, taxonomy_file: Path) -> Iterator[str]:
    """A database of this run (tagger_bench_<random>), migrated, with the taxonomy; dropped after."""
    name = f"tagger_bench_{uuid.uuid4().hex[:10]}"
    url = sa.engine.make_url(base_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url, taxonomy_file)
        yield url
    finally:
        with suppress(Exception):
            get_engine(url).dispose()
        get_engine.cache_clear()
        admin = sa.create_engine(admin_url(base_url), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own on a free port (nothing saved), so peak memory is ours alone: the
    `embedded` extra's (tagger/servers.py), else one on PATH."""
    with tempfile.TemporaryDirectory(prefix="tagger-bench-redis-") as folder, redis_server(Path(folder)) as server:
        yield server.url


def redis_info(url: str, section: str = "memory") -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return dict(client.info(section))
    finally:
        client.close()


def stop(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    """Stop a process we started (its whole session), gently first."""
    if proc.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- processes ------------------------------------------------------------------------------------


def bench_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a worker or CLI subprocess: every setting of the run as TAGGER_* variables, so
    that a worker builds the very prompts (budget, shortlist, threads...) its bare twin is compared with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGER_")}
    env.update({f"TAGGER_{name.upper()}": "" if value is None else str(value)
                for name, value in settings.model_dump().items()})  # None: the setting's "auto", empty
    env.update({"TAGGER_LOG_FORMAT": "json", "TAGGER_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (utime, stime of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def services_cpu_s(names: Sequence[str] = ("postgres", "redis-server")) -> float:
    """CPU seconds of every live process named ``names`` (PostgreSQL's backends, Redis): with the
    worker's and the producer's, the whole CPU a repo costs. Backends that exit take theirs along."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            text = stat.read_text()
            if text[text.index("(") + 1 : text.rindex(")")] in names:
                fields = text.rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid: int, key: str = "VmRSS") -> int:
    """VmRSS (now) or VmHWM (peak) of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@contextmanager
def worker(settings: Settings, log_dir: Path, *, timeout: float = 300, args: Sequence[str] = (), **extra_env: str
           ) -> Iterator[subprocess.Popen[bytes]]:
    """ONE real `tagger worker` subprocess (its default pool, or ``args``), returned once its model is loaded."""
    log_path = log_dir / f"worker-{uuid.uuid4().hex[:6]}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([*TAGGER, "worker", *args], env=bench_env(settings, **extra_env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    try:
        wait_for(lambda: b"worker_model_loaded" in log_path.read_bytes() or proc.poll() is not None,
                 timeout, "the worker to load its model")
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        proc.log_path = log_path  # type: ignore[attr-defined]
        yield proc
    finally:
        stop(proc)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tagger-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- data ---------------------------------------------------------------------------------------


_WORDS = (
    "the a fast simple small modern lightweight tool library for and with of to in using written "
    "built supports provides easy configurable extensible open source project users developers data "
    "files api server client plugin module package support example examples docs documentation "
    "install usage run build test release version license contributing features quick start getting "
    "started options"
)
_FILLER = tuple(_WORDS.split())


def synthetic_readme(rng: random.Random, phrases: Sequence[str]) -> str:
    """A README shaped like real ones: title, badges, a tagline naming a few topics, sections with
    prose, an install snippet, links and a table. Sizes vary from 1 to ~12 KB (median ~4 KB)."""
    topics = rng.sample(phrases, 3)
    title = "-".join(rng.sample(_FILLER, 2))
    parts = [
        f"# {title}\n",
        "".join(f"[![{b}](https://img.shields.io/badge/{b}-ok-green.svg)](https://ci.example.com/{title}) "
                for b in rng.sample(["build", "coverage", "pypi", "npm", "license", "docs"], rng.randint(0, 4))),
        f"\n\nA {topics[0]} {rng.choice(_FILLER)} for {topics[1]}, with {topics[2]}.\n",
        '<p align="center"><img src="docs/logo.png" width="200"></p>\n' if rng.random() < 0.4 else "",
    ]
    for _ in range(rng.choice((1, 2, 3, 4, 6, 8, 12))):
        heading = rng.choice(["Features", "Installation", "Usage", "Configuration", "Examples", "FAQ",
                              "Contributing", "License", "Design", "Benchmarks"])
        parts.append(f"\n## {heading}\n\n")
        for _ in range(rng.randint(1, 3)):
            words = [rng.choice(_FILLER) for _ in range(rng.randint(20, 70))]
            if rng.random() < 0.5:
                words.insert(rng.randrange(len(words)), rng.choice(phrases))
            parts.append(" ".join(words).capitalize() + ". See [the docs](https://example.com/docs).\n\n")
        if rng.random() < 0.5:
            lines = [f"{rng.choice(['pip install', 'npm install', 'cargo add', 'go get'])} {title}"]
            lines += [f"{rng.choice(_FILLER)}_{i} = {rng.randint(0, 99)}" for i in range(rng.randint(0, 20))]
            parts.append("```sh\n" + "\n".join(lines) + "\n```\n")
        if rng.random() < 0.2:
            parts.append("| option | default |\n|---|---|\n" + "".join(
                f"| {rng.choice(_FILLER)} | {rng.randint(0, 9)} |\n" for _ in range(rng.randint(2, 8))))
    return "".join(parts)


def synthetic_rows(prefix: str, n: int, seed: int = 5, distinct: int = 2000) -> Iterator[dict[str, str]]:
    """``n`` repos ``<prefix>000001``...; READMEs cycle over ``distinct`` generated ones (a per-repo
    line keeps every README's hash distinct)."""
    phrases = sorted({p for ps in phrases_by_tag().values() for p in ps})
    rng = random.Random(seed)
    readmes = [synthetic_readme(rng, phrases) for _ in range(min(n, distinct))]
    for i in range(n):
        repo_id = f"{prefix}{i:07d}"
        yield {"id": repo_id, "name": f"bench/{repo_id}", "readme": f"{readmes[i % len(readmes)]}\nRepo {repo_id}.\n"}


def insert_repos(url: str, rows: Iterator[dict[str, str]]) -> list[str]:
    """Write repos with the product's own upsert, page by page; the ids, in order."""
    ids: list[str] = []
    page: list[dict[str, str]] = []
    for row in rows:
        page.append(row)
        if len(page) == PAGE:
            with transaction(url) as conn:
                upsert_repos(conn, page)
            ids.extend(r["id"] for r in page)
            page = []
    if page:
        with transaction(url) as conn:
            upsert_repos(conn, page)
        ids.extend(r["id"] for r in page)
    return ids


def sample_readmes(n: int) -> tuple[list[dict[str, str]], str]:
    """``n`` real-world READMEs for the model path: the dev set when present (read at run time),
    then the samples the package ships, topped up with synthetic ones. (rows, where they came from)"""
    rows: list[dict[str, str]] = []
    sources = []
    if DEV_SET.is_file():
        for number, line in enumerate(DEV_SET.read_text(encoding="utf-8").splitlines()):
            if len(rows) >= n:
                break
            record = json.loads(line)
            rows.append({"id": f"dev{number:04d}", "name": record.get("repo", ""), "readme": record["readme"]})
        sources.append(f"{len(rows)} from {DEV_SET.name}")
    if len(rows) < n:
        shipped = sample_rows()[: n - len(rows)]
        rows.extend({**r, "id": f"sample{r['id']}"} for r in shipped)
        sources.append(f"{len(shipped)} shipped samples")
    if len(rows) < n:
        missing = n - len(rows)
        rows.extend(synthetic_rows("syn", missing, seed=11))
        sources.append(f"{missing} synthetic")
    return rows, ", ".join(sources)
