"""`tagger export`: the results as JSON Lines, whole or only what changed since a time or a run. Its own
module: an export loads the database layer and nothing of the producer (Celery, alembic)."""

from __future__ import annotations

import contextlib
import sys
from datetime import datetime
from typing import TextIO

import click

from cli.base import DATE_FORMATS, as_utc
from cli.settings import settings_with
from db.engine import transaction
from db.export import STALE_SUFFIX, database_now, iter_export_blocks
from db.runs import existing_run
from tagger.errors import InputError
from tagger.files import atomic_write, output_path


@click.command()
@click.option("--out", help="Write to this file instead of standard output (replaced only once the export is "
              "complete).")
@click.option("--with-scores", is_flag=True,
              help='Add each tag\'s confidence: {"id", "name", "score"} (null where the backend gave none).')
@click.option("--changed-since", "changed_since", type=click.DateTime(DATE_FORMATS), metavar="TIME",
              help="Only repos whose live tags changed after TIME (new, re-tagged, pinned, unpinned, rolled "
              'back); repos untagged since are written {"id": ..., "removed": true}. Give the "as of" time a '
              "previous export printed. A naive TIME is UTC.")
@click.option("--since-run", "since_run", type=int, metavar="RUN",
              help="Like --changed-since, from the time RUN started.")
def export(out: str | None, with_scores: bool, changed_since: datetime | None, since_run: int | None) -> None:
    """The results as JSON Lines, one object per tagged repo: {"id": ..., "tags": [{"id", "name"}, ...]};
    tags pinned by hand add "source": "manual".

    A repo whose tags were computed from an older README than its current one (the new README is not
    tagged yet, or could not be: `tagger dlq list`) gets "stale": true (never a pinned one).
    Prints (on standard error) the time the export is as of: the next --changed-since.
    """
    settings = settings_with()
    if changed_since is not None and since_run is not None:
        raise InputError("give --changed-since or --since-run, not both")
    if since_run is not None:
        with transaction(settings.database_url) as conn:
            changed_since = existing_run(conn, since_run).started_at
    elif changed_since is not None:
        changed_since = as_utc(changed_since)
    target = output_path(out) if out is not None else None  # checked before the database is read
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(atomic_write(target)) if target else sys.stdout
        written, stale, as_of = _write_results(settings.database_url, stream, with_scores, changed_since)
    if stale:
        click.echo(f'note: {stale} repos exported with "stale": true: tagged from an older README than their '
                   "current one (`tagger enqueue --stale` re-tags them; `tagger dlq list` shows unusable ones)",
                   err=True)
    if target:
        click.echo(f"exported {written} repos to {target}", err=True)
    click.echo(f"as of {as_of.isoformat()} (for the next --changed-since)", err=True)


def _write_results(database_url: str, stream: TextIO, with_scores: bool,
                   changed_since: datetime | None) -> tuple[int, int, datetime]:
    written = stale = 0
    stale_line_end = (STALE_SUFFIX + "\n").encode()
    stream.flush()  # the lines go to its bytes, after whatever was written as text
    with transaction(database_url) as conn:
        as_of = database_now(conn)
        for block in iter_export_blocks(conn, with_scores=with_scores, changed_since=changed_since):
            stream.buffer.write(block)  # a reader gone (`| head -1`) raises here: BrokenPipeError
            written += block.count(b"\n")
            stale += block.count(stale_line_end)
    return written, stale, as_of
