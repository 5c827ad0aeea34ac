"""The whole index: every operator command against an index of N repos, as an operator runs it (a real
`tagger` subprocess), its wall time and peak RSS.

The index is bulk-loaded (bench/bulk.py): N repos, each tagged by an old run and re-tagged by a live
run (one version in history each), jobs done, one in a thousand dead-lettered, and a canary with its
10 % sample's shadow results done. Then, in order: `tagger --help`, status, a metrics scrape, runs,
review, export (and --with-scores), one repo's history, enqueue --stale with nothing stale and with 1 %
stale, sweep, a canary draw, diff, export --changed-since after 1 % of the results changed, promote of the
loaded canary and export --changed-since after it (10 % changed; when the CLI has the option), rollback
of a run that re-tagged one repo in ten (built by SQL: the issue's "rollback of a 100,000-repo re-tag run"
at 1 M), rollback of the live run (the whole index), history pruning (when the CLI has it), and an import of a
JSON Lines file of realistic READMEs, then the same rows by one bare COPY: the server's floor for an import.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import psycopg
import sqlalchemy as sa

from db.engine import transaction
from db.models import VERSION_NAMES
from db.repos import BINARY_COPY_HEADER, BINARY_COPY_TRAILER, REPOS_COPY_COLUMNS, repos_copy_tuples
from producer.enqueue import current_configuration, iter_selection
from producer.importer import CHUNK_ROWS, ImportReport, iter_rows
from producer.metrics import PipelineCollector
from tagger.settings import Settings

from . import ROOT, TAGGER, bench_env, synthetic_rows
from .bulk import IndexShape, LoadedIndex, load_index, repo_id

FULL_REPOS = 1_000_000
QUICK_REPOS = 100_000
IMPORT_LINES = 200_000
HELP_RUNS = 5


@dataclass(frozen=True, slots=True)
class Timed:
    """One command's run: wall seconds, peak RSS (the kernel's ru_maxrss of that child), exit status."""

    args: tuple[str, ...]
    seconds: float
    max_rss_mib: float
    returncode: int
    stderr_tail: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_timed(settings: Settings, args: Sequence[str], tmp: Path, timeout: float = 3600) -> Timed:
    """`tagger ARGS` as a fresh subprocess, its standard output to a file, under GNU time: its %M is the
    command's own peak RSS. (This process's wait4 would count the forked copy of the benchmark itself
    before the exec, and RUSAGE_CHILDREN the largest child so far.)"""
    out_path, err_path, usage_path = tmp / "cmd.out", tmp / "cmd.err", tmp / "cmd.usage"
    gnu_time = shutil.which("time") or "/usr/bin/time"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([gnu_time, "-f", "%M", "-o", str(usage_path), *TAGGER, *args],
                                env=bench_env(settings), cwd=ROOT, stdout=out, stderr=err, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        seconds = time.perf_counter() - started
    lines = usage_path.read_text().split()
    max_rss_kib = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    return Timed(tuple(args), seconds, max_rss_kib / 1024, proc.returncode,
                 err_path.read_text(errors="replace")[-1500:])


def cli_has(settings: Settings, tmp: Path, args: Sequence[str], marker: str) -> bool:
    """Whether `tagger ARGS --help` shows ``marker``: commands and options a later version adds are timed
    when present, reported absent otherwise."""
    probe = run_timed(settings, [*args, "--help"], tmp, timeout=120)
    return probe.ok and marker in (tmp / "cmd.out").read_text(errors="replace")


def median_help_s(settings: Settings, tmp: Path, runs: int = HELP_RUNS) -> tuple[float, float]:
    timings = [run_timed(settings, ["--help"], tmp, timeout=120) for _ in range(runs)]
    return statistics.median(t.seconds for t in timings), max(t.max_rss_mib for t in timings)


def write_import_file(path: Path, lines: int, prefix: str = "imp") -> int:
    """JSON Lines of new repos with README-sized text (bench.synthetic_rows: 1-12 KB, median ~4 KB); bytes."""
    with open(path, "w", encoding="utf-8") as out:
        for row in synthetic_rows(prefix, lines, seed=17):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path.stat().st_size


_FLOOR_TABLE = "bench_import_floor"
_COPY_PIECE = 1024 * 1024


def write_floor_copy(jsonl: Path, out: Path) -> int:
    """The import file's rows as one binary COPY stream, read and encoded as `tagger import` reads and
    COPYs them into repos (REPOS_COPY_COLUMNS); rows."""
    rows = 0
    with open(jsonl, "rb") as lines, open(out, "wb") as copy:
        copy.write(BINARY_COPY_HEADER)
        parsed = iter_rows(lines, ImportReport())
        while chunk := list(islice(parsed, CHUNK_ROWS)):
            copy.write(repos_copy_tuples(chunk))
            rows += len(chunk)
        copy.write(BINARY_COPY_TRAILER)
    return rows


def import_floor_rows_per_s(url: str, jsonl: Path, tmp: Path) -> float:
    """The server's own pace at storing the import's rows: the same rows, encoded beforehand (untimed),
    streamed by one binary COPY into a table shaped as repos (its columns, defaults, storage, lz4 and
    primary key; no trigger, no foreign key to check), committed. No client can import faster than this:
    `tagger import` also reads, checks and hashes the lines, and finds the ids it has seen before."""
    stream = tmp / "floor.copy"
    rows = write_floor_copy(jsonl, stream)
    engine_url = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(engine_url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {_FLOOR_TABLE} (LIKE repos INCLUDING ALL)")
            # The floor at its best: none of the WAL the import wrote is left to checkpoint meanwhile.
            with suppress(psycopg.errors.InsufficientPrivilege):
                conn.execute("CHECKPOINT")
            started = time.perf_counter()
            with conn.cursor() as cursor, cursor.copy(
                    f"COPY {_FLOOR_TABLE} {REPOS_COPY_COLUMNS} FROM STDIN (FORMAT BINARY)") as copy, \
                    open(stream, "rb") as source:
                while piece := source.read(_COPY_PIECE):
                    copy.write(piece)
            seconds = time.perf_counter() - started  # autocommit: the COPY's commit is in
            conn.execute(f"DROP TABLE {_FLOOR_TABLE}")
    finally:
        stream.unlink(missing_ok=True)
    return rows / seconds


def metrics_scrape_s(settings: Settings, scrapes: int = 3) -> float:
    """A /metrics scrape's collection (what `tagger metrics` runs per GET), in this process: the best of
    ``scrapes`` by one collector, as a running exporter serves them (its first scrape also waits for the
    workers' first ping, which later ones read from its watch thread)."""
    collector = PipelineCollector(settings)
    list(collector.collect())
    timings = []
    for _ in range(scrapes):
        started = time.perf_counter()
        list(collector.collect())
        timings.append(time.perf_counter() - started)
    collector.workers.stop()
    return min(timings)


def stale_selection(settings: Settings) -> tuple[int, float]:
    """The `enqueue --stale` selection alone (every page, nothing sent): (repos selected, seconds)."""
    started = time.perf_counter()
    n = sum(len(page) for page in iter_selection(settings, "stale"))
    return n, time.perf_counter() - started


def make_stale(url: str, every: int) -> int:
    """One result in ``every`` computed from another README than the repo's current one; how many."""
    with transaction(url) as conn:
        return int(conn.execute(sa.text(
            "UPDATE results SET readme_hash = 'bench-stale' WHERE abs(hashtext(repo_id)) % :every = 0"),
            {"every": every}).rowcount)


def make_changed(url: str, every: int) -> int:
    """One result in ``every`` changed now, as a re-tag changes it (its changed_at); how many."""
    with transaction(url) as conn:
        return int(conn.execute(sa.text(
            "UPDATE results SET changed_at = now() WHERE abs(hashtext(repo_id)) % :every = 1"),
            {"every": every}).rowcount)


_VERSIONS = ", ".join(VERSION_NAMES)


def make_retag_run(url: str, every: int, of_run: int) -> tuple[int, int]:
    """A live run that re-tagged one repo in ``every`` of ``of_run``'s, as a refresh does: their results
    replaced by its own, the versions before in history; (its id, repos)."""
    with transaction(url) as conn:
        run_id = int(conn.execute(sa.text(
            "INSERT INTO runs (kind, started_by, label, backend, model, prompt_version, taxonomy_version, selection, "
            "enqueued) SELECT kind, started_by, 'bench: re-tag', backend, model, prompt_version, taxonomy_version, "
            "'stale', 0 FROM runs WHERE id = :run RETURNING id"), {"run": of_run}).scalar_one())
        repos = int(conn.execute(sa.text(f"""
            WITH picked AS (
                SELECT * FROM results WHERE run_id = :of_run AND abs(hashtext(repo_id)) % :every = 2
                ORDER BY repo_id FOR UPDATE
            ), archived AS (
                INSERT INTO result_history ({_VERSIONS}, replaced_by_run, replaced_reason)
                SELECT {_VERSIONS}, :run, 'run' FROM picked
            )
            UPDATE results r SET run_id = :run, tagged_at = now(), changed_at = now(), tag_ids = r.tag_ids[1:1]
            FROM picked WHERE r.repo_id = picked.repo_id
        """), {"of_run": of_run, "every": every, "run": run_id}).rowcount)
        conn.execute(sa.text("UPDATE runs SET enqueued = :n, sent_at = now() WHERE id = :run"),
                     {"n": repos, "run": run_id})
    return run_id, repos


def database_mib(url: str) -> float:
    with transaction(url) as conn:
        return float(conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one()) / 2**20


@dataclass
class IndexRun:
    index: LoadedIndex
    database_mib: float
    timings: dict[str, Timed | None]  # None: the command does not exist (yet)
    figures: dict[str, float]


def _since(moment: float) -> str:
    """`--changed-since`'s argument for what changes after ``moment`` (a second earlier: the option's
    precision; the rows changed in that second are few and included)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment - 1))


def load(settings: Settings, repos: int) -> LoadedIndex:
    return load_index(settings.database_url, IndexShape(repos), current_configuration(settings).as_dict())


def run(settings: Settings, repos: int, tmp: Path, say: Callable[[str], None],
        import_lines: int = IMPORT_LINES) -> IndexRun:
    # No worker takes from the queue here: the producer's backpressure would hold the enqueues and the
    # sweep of a large index above the high-water mark for ever. What is timed is the selecting and sending.
    settings = settings.model_copy(update={"queue_high_water": 10 * repos})
    url = settings.database_url
    say(f"index: bulk-loading {repos:,} repos (results, jobs, history, dead letters, a canary)")
    index = load(settings, repos)
    size = database_mib(url)
    say(f"index: loaded in {index.seconds:.1f} s ({size:,.0f} MiB); timing the commands")
    timings: dict[str, Timed | None] = {}
    figures: dict[str, float] = {}

    def timed(name: str, *args: str) -> Timed:
        result = run_timed(settings, args, tmp)
        if not result.ok:
            raise RuntimeError(f"tagger {' '.join(args)} exited {result.returncode}: {result.stderr_tail}")
        say(f"  {name}: {result.seconds:.2f} s, {result.max_rss_mib:.0f} MiB")
        timings[name] = result
        return result

    figures["help_s"], figures["help_max_rss_mib"] = median_help_s(settings, tmp)
    say(f"  --help: median {figures['help_s']:.2f} s")
    timed("status", "status")
    figures["metrics_scrape_s"] = metrics_scrape_s(settings)
    timed("runs", "runs")
    timed("review", "review")
    timed("export", "export", "--out", str(tmp / "export.jsonl"))
    timed("export --with-scores", "export", "--with-scores", "--out", str(tmp / "export-scores.jsonl"))
    timed("history ID", "history", repo_id("r", repos // 2))
    selected, figures["stale_select_s"] = stale_selection(settings)
    figures["stale_select_repos"] = selected
    timed("enqueue --stale (nothing stale)", "enqueue", "--stale")
    figures["stale_repos"] = make_stale(url, 100)
    timed("enqueue --stale (1 % stale)", "enqueue", "--stale")
    timed("sweep", "sweep", "--older-than", "0")
    timed("canary --sample", "canary", "--sample", str(min(10_000, max(1, repos // 10))), "--seed", "1")
    timed("diff", "diff", str(index.canary_run))
    incremental = cli_has(settings, tmp, ["export"], "--changed-since")
    if incremental:
        since = _since(time.time())
        figures["changed_1pct_repos"] = make_changed(url, 100)
        timed("export --changed-since (1 % changed)", "export", "--changed-since", since,
              "--out", str(tmp / "changed.jsonl"))
    since = _since(time.time())
    timed("promote", "promote", str(index.canary_run))
    if incremental:
        timed("export --changed-since", "export", "--changed-since", since, "--out", str(tmp / "changed.jsonl"))
    else:
        timings["export --changed-since"] = timings["export --changed-since (1 % changed)"] = None
    retag_run, figures["retag_repos"] = make_retag_run(url, 10, index.live_run)
    timed("rollback RUN (a re-tag of 10 %)", "rollback", str(retag_run))
    timed("rollback RUN (whole index)", "rollback", str(index.live_run))
    if cli_has(settings, tmp, ["history", "prune"], "--keep"):
        timed("history prune --keep 1", "history", "prune", "--keep", "1")
    else:
        timings["history prune --keep 1"] = None
    import_file = tmp / "import.jsonl"
    say(f"index: writing {import_lines:,} JSON lines of READMEs to import")
    figures["import_file_mib"] = write_import_file(import_file, import_lines) / 2**20
    timed("import", "import", str(import_file))
    say("index: the same rows by one bare binary COPY (the server's floor for an import)")
    figures["import_floor_rows_per_s"] = import_floor_rows_per_s(url, import_file, tmp)
    import_file.unlink()

    seconds = {name: t.seconds for name, t in timings.items() if t is not None}
    figures.update({
        "index_repos": repos,
        "bulk_load_s": index.seconds,
        "bulk_load_s_per_million": index.seconds_per_million,
        "index_db_mib": size,
        "status_s": seconds["status"],
        "export_rows_per_s": repos / seconds["export"],
        "export_scores_rows_per_s": repos / seconds["export --with-scores"],
        "stale_select_us_per_repo": figures["stale_select_s"] * 1e6 / repos,
        "promote_repos_per_s": index.canary_sample / seconds["promote"],
        "rollback_repos_per_s": repos / seconds["rollback RUN (whole index)"],
        "rollback_retag_repos_per_s": figures["retag_repos"] / seconds["rollback RUN (a re-tag of 10 %)"],
        "import_rows_per_s": import_lines / seconds["import"],
        "import_of_floor": import_lines / seconds["import"] / figures["import_floor_rows_per_s"],
        "import_max_rss_mib": timings["import"].max_rss_mib if timings["import"] else float("nan"),
        "max_rss_mib": max([figures["help_max_rss_mib"]] + [t.max_rss_mib for t in timings.values() if t]),
    })
    return IndexRun(index, size, timings, figures)
