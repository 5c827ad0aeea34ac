"""The main flow: db upgrade, taxonomy load, import, enqueue, sweep, review (status: cli/status.py, export:
cli/export.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cli.base import operator
from cli.settings import settings_with
from db.engine import transaction
from db.migrate import upgrade
from db.repos import Selection
from db.results import least_confident_results
from db.taxonomy import count_repos_tagged_with, load_taxonomy, replace_taxonomy
from db.work import LIVE, canary_store
from producer.enqueue import EnqueueReport, RunSpec, enqueue_ids, enqueue_selection, sweep_stuck
from producer.importer import import_repos
from producer.progress import logs_above_bars
from producer.runs import find_run
from tagger.errors import InputError
from tagger.taxonomy import Taxonomy


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create the database if missing, run the migrations, load the taxonomy (TAGGER_TAXONOMY_FILE)."""
    settings = settings_with()
    created, version = upgrade(settings.database_url, settings.taxonomy_file)
    click.echo(f"database {'created and ' if created else ''}at the latest schema; taxonomy version {version}")


@click.group()
def taxonomy() -> None:
    """The tag taxonomy."""


@taxonomy.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Load it even if it drops tags that tagged repos use.")
def taxonomy_load(file: Path, force: bool) -> None:
    """Replace the taxonomy with FILE (a JSON array of {"id", "name"}); a changed one gets a new version.

    Results computed under an older taxonomy become stale: `tagger enqueue --stale` re-tags them. A file
    that drops tags which tagged repos use is refused unless --force (their tags would vanish from the
    export until they are re-tagged).
    """
    loaded = Taxonomy.load(file)
    with transaction(settings_with().database_url) as conn:
        current = load_taxonomy(conn)
        dropped = sorted({t.id for t in current.tags} - {t.id for t in loaded.tags})
        affected = count_repos_tagged_with(conn, dropped)
        if affected and not force:
            sample = ", ".join(repr(current.by_id(i).name) for i in dropped[:5])  # type: ignore[union-attr]
            more = f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
            raise InputError(
                f"{file} drops {len(dropped)} tags ({sample}{more}) used by {affected} tagged repos: their tags "
                "would vanish from `tagger export`. Nothing was changed; pass --force to load it anyway, then "
                "`tagger enqueue --stale`"
            )
        renamed = [(t.id, t.name, new.name) for t in current.tags
                   if (new := loaded.by_id(t.id)) is not None and new.name != t.name]
        renamed_in_use = count_repos_tagged_with(conn, [i for i, _, _ in renamed])
        version = replace_taxonomy(conn, loaded, source=str(file))
    click.echo(f"{len(loaded)} tags loaded; taxonomy version {version}")
    if renamed:
        sample = ", ".join(f"{old!r} → {new!r}" for _, old, new in renamed[:5])
        click.echo(f"note: {len(renamed)} tags keep their id under another name ({sample}"
                   f"{' …' if len(renamed) > 5 else ''}); {renamed_in_use} tagged repos carry them and are exported "
                   "under the new names: `tagger enqueue --stale` re-tags them", err=True)
    if affected:
        click.echo(f"warning: {affected} tagged repos had dropped tags: `tagger enqueue --stale` re-tags them",
                   err=True)


@click.command("import")
@click.argument("file")
def import_(file: str) -> None:
    """Add or update repos from FILE, JSON Lines of {"id", "name", "readme"}; `-` reads standard input.

    Bad lines are reported with their line numbers; every good line is imported. An id on several lines
    is imported once, from its last line (each repeat is reported). Exit status 1 when any line was
    rejected. Running it again is harmless: an interrupted import can simply be restarted.
    """
    settings = settings_with()
    report = import_repos(settings.database_url, file, progress=True, readme_max_bytes=settings.readme_max_bytes)
    for message in report.warnings[:50]:
        click.echo(f"warning: {message}", err=True)
    for message in report.errors[:200]:
        click.echo(f"error: {message}", err=True)
    if report.rejected > 200:
        click.echo(f"error: ... and {report.rejected - 200} more rejected lines", err=True)
    if report.duplicates:
        click.echo(f"note: {report.duplicates} lines repeated an earlier id: the last line of each id was imported",
                   err=True)
    if report.truncated:
        click.echo(f"note: {report.truncated} READMEs were longer than {settings.readme_max_bytes} bytes "
                   "(TAGGER_README_MAX_BYTES): their head was stored, and their original size", err=True)
    click.echo(f"imported {report.imported} repos; rejected {report.rejected} lines")
    if report.rejected:
        sys.exit(1)


def _read_ids_file(path: Path, skipped: list[int]):  # type: ignore[no-untyped-def]
    """The ids of ``path``, one per line; the numbers of lines that cannot be ids go to ``skipped``."""
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                click.echo(f"error: {path}:{number}: not valid UTF-8, skipped", err=True)
                skipped.append(number)
                continue
            if line.startswith("{"):
                click.echo(f"error: {path}:{number}: a JSON object, not a repo id: --file takes one id per line "
                           "(JSON Lines of repos go to `tagger import`)", err=True)
                skipped.append(number)
                continue
            if line and not line.startswith("#"):
                yield line


@click.command()
@click.option("--all", "all_", is_flag=True, help="Every repo in the index.")
@click.option("--untagged", is_flag=True, help="Repos without a result.")
@click.option("--stale", is_flag=True, help="Repos never tagged, whose README changed, or tagged under another "
              "backend, model, prompt version or taxonomy version.")
@click.option("--ids", help="Comma-separated repo ids.")
@click.option("--file", "ids_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file of repo ids, one per line.")
@click.option("--batch-size", type=click.IntRange(1, 10_000), help="Repo ids per task message [TAGGER_BATCH_SIZE].")
@click.option("--label", help="A note recorded with the run (see `tagger runs`).")
def enqueue(all_: bool, untagged: bool, stale: bool, ids: str | None, ids_file: Path | None,
            batch_size: int | None, label: str | None) -> None:
    """Send repos to the workers, in batches, pausing while the queue is full. Recorded as a run."""
    chosen = [name for name, on in (("--all", all_), ("--untagged", untagged), ("--stale", stale),
                                    ("--ids", ids is not None), ("--file", ids_file is not None)) if on]
    if len(chosen) != 1:
        raise click.UsageError("choose exactly one of --all, --untagged, --stale, --ids, --file")
    settings = settings_with(batch_size=batch_size)
    run = RunSpec(operator(), label)
    report: EnqueueReport
    skipped: list[int] = []
    with logs_above_bars():  # the "sent" bar; `tagger status --watch` shows the repos tagged
        if ids is not None:
            report = enqueue_ids(settings, ids.split(","), progress=True, run=run)
        elif ids_file is not None:
            report = enqueue_ids(settings, _read_ids_file(ids_file, skipped), progress=True, run=run)
        else:
            selection: Selection = "all" if all_ else "untagged" if untagged else "stale"
            report = enqueue_selection(settings, selection, progress=True, run=run)
    for message in report.invalid[:50]:
        click.echo(f"error: {message}", err=True)
    if report.unknown:
        sample = ", ".join(repr(i) for i in report.unknown_sample)
        click.echo(f"warning: {report.unknown} ids are not in the index and were not enqueued: {sample}", err=True)
    if report.duplicates:
        click.echo(f"note: {report.duplicates} duplicate ids enqueued once", err=True)
    click.echo(f"enqueued {report.sent} repos in {report.batches} batches"
               + (f" (run {report.run_id})" if report.run_id is not None else ""))
    if skipped or report.invalid or (report.unknown and not report.sent):
        sys.exit(1)


@click.command()
@click.option("--older-than", type=click.IntRange(0), help="Seconds queued without a result "
              "[TAGGER_SWEEP_OLDER_THAN_S].")
@click.option("--canary", "canary_run", type=int, metavar="RUN", help="Sweep canary RUN's sample instead (beat "
              "sweeps only live work).")
def sweep(older_than: int | None, canary_run: int | None) -> None:
    """Re-enqueue repos queued too long without a result (messages lost by the broker)."""
    settings = settings_with()
    if canary_run is not None:
        find_run(settings, canary_run, kind="canary")
    swept = sweep_stuck(settings, older_than, store=LIVE if canary_run is None else canary_store(canary_run))
    click.echo(f"re-enqueued {swept} repos")


@click.command()
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="How many repos to list.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def review(limit: int, as_json: bool) -> None:
    """The least confident results first: the repos whose tags most deserve a human look.

    Confidence is the best tag's score (tagger/scoring.py: the calibrated probability that it is right);
    results of unscored backends (keyword, embedding) have none and are not listed."""
    settings = settings_with()
    with transaction(settings.database_url) as conn:
        names = {t.id: t.name for t in load_taxonomy(conn).tags}
        rows = least_confident_results(conn, limit)
    if rows and not as_json:
        click.echo(f"{'confidence':<10}  {'id':<10} {'name':<30} tags (score)")
    for row in rows:
        scores = row.tag_scores or []
        tags: list[dict[str, Any]] = [
            {"id": i, "name": names.get(i, str(i)), "score": scores[n] if n < len(scores) else None}
            for n, i in enumerate(row.tag_ids)
        ]
        if as_json:
            click.echo(json.dumps({"id": row.repo_id, "name": row.name, "confidence": row.confidence,
                                   "tags": tags}, ensure_ascii=False))
        else:
            shown = ", ".join(f"{t['name']} {t['score']:.2f}" if t["score"] is not None else t["name"] for t in tags)
            click.echo(f"{row.confidence:<10.3f}  {row.repo_id:<10} {row.name or '':<30} {shown}")
    if not rows and not as_json:
        click.echo("no scored results yet", err=True)
