"""`tagger dlq`: the repos that kept failing."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime

import click

from cli.base import DATE_FORMATS, as_utc, operator
from cli.settings import settings_with
from db.dead_letters import dead_letter_ids, get_dead_letter, list_dead_letters, purge_dead_letters
from db.engine import transaction
from producer.enqueue import RunSpec, Sender
from tagger.errors import InputError


def _jsonable(row: dict[str, object]) -> dict[str, object]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


@click.group()
def dlq() -> None:
    """Dead letters: repos that failed permanently or too often."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, one object per dead letter.")
@click.option("--limit", type=click.IntRange(1), help="Show at most this many, newest first.")
def dlq_list(as_json: bool, limit: int | None) -> None:
    """Dead letters, newest first."""
    with transaction(settings_with().database_url) as conn:
        rows = [_jsonable(r.as_dict()) for r in list_dead_letters(conn, limit)]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    if not rows:
        click.echo("no dead letters")
        return
    for r in rows:
        message = str(r["message"]).replace("\n", " ")[:80]
        click.echo(
            f"{r['repo_id']!s:<24} {r['error_class']!s:<20} attempts={r['attempts']} {r['last_failed_at']}  {message}"
        )


@dlq.command("show")
@click.argument("repo_id")
def dlq_show(repo_id: str) -> None:
    """One dead letter in full."""
    with transaction(settings_with().database_url) as conn:
        row = get_dead_letter(conn, repo_id)
    if row is None:
        raise InputError(f"no dead letter for repo {repo_id!r}")
    click.echo(json.dumps(_jsonable(row.as_dict()), indent=2, ensure_ascii=False))


@dlq.command("requeue")
@click.option("--all", "all_", is_flag=True, help="Every dead letter.")
@click.argument("repo_ids", nargs=-1)
def dlq_requeue(all_: bool, repo_ids: tuple[str, ...]) -> None:
    """Send dead-lettered repos to the workers again (REPO_IDS, or --all).

    A dead letter stays listed until its repo is tagged successfully.
    """
    settings = settings_with()
    with transaction(settings.database_url) as conn:
        known = set(dead_letter_ids(conn))
    if all_ == bool(repo_ids):
        raise click.UsageError("give repo ids or --all, not both or neither")
    wanted = sorted(known) if all_ else list(dict.fromkeys(i for v in repo_ids for i in v.split(",") if i))
    missing = [i for i in wanted if i not in known]
    if missing:
        raise InputError(f"not in the dead-letter list: {', '.join(map(repr, missing[:10]))}")
    sender = Sender(settings, run=RunSpec(operator(), "dlq requeue"), selection="dead letters")
    with contextlib.closing(sender):
        sender.send(wanted)
    click.echo(f"requeued {sender.report.sent} repos")


@dlq.command("purge")
@click.option("--before", required=True, type=click.DateTime(DATE_FORMATS),
              help="Delete dead letters whose last failure is older than this date or time (UTC when naive).")
def dlq_purge(before: datetime) -> None:
    """Delete old dead letters (their repos keep their job state 'dead')."""
    with transaction(settings_with().database_url) as conn:
        removed = purge_dead_letters(conn, as_utc(before))
    click.echo(f"purged {removed} dead letters")
