"""Re-tagging you can trust: runs, a canary's diff and promotion, rollback, pinned tags, a repo's history
(the canary's start, which sends to the queue: cli/canary.py)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import click

from cli.base import DATE_FORMATS, as_utc, jsonable, operator, when
from cli.settings import settings_with
from db.engine import transaction
from db.progress import runs_progress
from db.runs import list_runs, run_counts
from producer.progress import run_state, with_true_counts
from producer.runs import (
    RunStatus,
    diff_run,
    history,
    promote_run,
    prune,
    rollback,
    set_manual_tags,
    unset_manual_tags,
)


@click.command("runs")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="The newest runs only.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def runs_(limit: int, as_json: bool) -> None:
    """The runs, newest first: who started them, the configuration, the selection, their progress."""
    settings = settings_with()
    with transaction(settings.database_url) as conn:
        listed = list_runs(conn, limit)
        progress = {p.run_id: p for p in runs_progress(conn, [run.id for run in listed])}
        rows = [RunStatus(run, with_true_counts(run_counts(conn, run), progress[run.id])) for run in listed]
        states = {run.id: run_state(progress[run.id]) for run in listed}
    if as_json:
        for status in rows:
            click.echo(json.dumps(jsonable(status.as_dict() | {"state": states[status.run.id]})))
        return
    click.echo(f"{'id':>5} {'kind':<6} {'started (UTC)':<19} {'by':<20} {'backend/model':<32} {'selection':<20} "
               f"{'sent':>7} {'tagged':>7} {'pending':>7} {'dead':>5}  state")
    for status in rows:
        run, counts = status.run, status.counts
        sent = counts.get("enqueued", counts.get("sample", 0))
        config = f"{run.configuration.backend}/{run.configuration.model}"
        if len(config) > 32:
            config = "..." + config[-29:]
        by = run.started_by + (f" ({run.label})" if run.label else "")
        click.echo(f"{run.id:>5} {run.kind:<6} {when(run.started_at):<19} {by[:20]:<20} {config:<32} "
                   f"{run.selection[:20]:<20} {sent:>7} {counts['tagged']:>7} {counts['pending']:>7} "
                   f"{counts['dead']:>5}  {states[run.id]}")


@click.command()
@click.argument("run_id", metavar="RUN", type=int)
@click.option("--gold", "gold_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labelled repos (JSON Lines with repo, readme, gold) : quality of live and shadow tags on "
              "those in the sample, matched by repo id or name.")
@click.option("--top", type=click.IntRange(0), default=10, show_default=True, help="Repos that changed most, shown.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def diff(run_id: int, gold_file: Path | None, top: int, as_json: bool) -> None:
    """A canary's shadow results against the live ones on its sample: what promoting it would change."""
    result = diff_run(settings_with(), run_id, top=top, gold_file=gold_file)
    if as_json:
        click.echo(json.dumps(result.as_json()))
        return
    share = f"{result.share_unchanged:.1%}" if result.share_unchanged is not None else "-"
    click.echo(f"canary {run_id}: sample {result.sample}, tagged {result.done}, pending {result.pending}, "
               f"failed {result.dead}")
    click.echo(f"unchanged: {result.unchanged} of {result.done} ({share}); pinned by hand (never promoted): "
               f"{result.pinned}")
    click.echo("added:   " + (", ".join(f"{k} +{v}" for k, v in result.added.items()) or "-"))
    click.echo("removed: " + (", ".join(f"{k} -{v}" for k, v in result.removed.items()) or "-"))
    if result.changed_most:
        click.echo("changed most:")
        width = max(len(c["id"]) for c in result.changed_most)
        for change in result.changed_most:
            click.echo(f"  {change['id']:<{width}}  {', '.join(change['old']) or '(none)'}  ->  "
                       f"{', '.join(change['new']) or '(none)'}")
    if result.gold is not None:
        click.echo(f"on {result.gold['labelled']} labelled repos of the sample:")
        for side in ("live", "shadow"):
            scores = result.gold[side]
            if scores:
                click.echo(f"  {side:<7} precision {scores['precision']:.3f}  recall {scores['recall']:.3f}  "
                           f"F1 {scores['f1']:.3f}  primary@3 {scores['primary_at_3']:.3f}")


@click.command()
@click.argument("run_id", metavar="RUN", type=int)
def promote(run_id: int) -> None:
    """Write a canary's results to live (pinned repos excepted). Promoting twice changes nothing more.

    The promoted results record the canary's configuration: switch the live workers and beat to it too,
    or the next stale refresh re-tags them under the old one. `tagger rollback RUN` undoes a promote.
    """
    report = promote_run(settings_with(), run_id)
    click.echo(f"promoted {report.promoted} results of canary {run_id}"
               + (f"; {report.already} promoted before" if report.already else ""))
    if report.skipped:
        sample = ", ".join(report.skipped_sample[:10]) + (" …" if report.skipped > 10 else "")
        click.echo(f"not promoted (pinned by hand, or README changed since): {report.skipped}: {sample}",
                   err=True)
    if report.pending:
        click.echo(f"{report.pending} repos of the sample are not tagged yet: promote again once they are", err=True)


@click.command("rollback")
@click.argument("run_id", metavar="RUN", type=int)
def rollback_(run_id: int) -> None:
    """Restore, for every repo RUN changed, the version before it; repos changed again since, or pinned,
    are reported and left alone. The run's batches still in flight are dropped when they arrive."""
    report = rollback(settings_with(), run_id)
    click.echo(f"run {run_id} rolled back: {report.restored} restored, {report.removed} untagged "
               f"(the run had tagged them first)")
    for what, n, ids in (("changed again since", report.changed_since, report.changed_since_sample),
                         ("pinned by hand", report.pinned, report.pinned_sample)):
        if n:
            click.echo(f"not touched, {what}: {n}: {', '.join(ids[:10])}{' …' if n > 10 else ''}", err=True)


class _HistoryGroup(click.Group):
    """`tagger history ID` shows a repo's versions; `tagger history prune ...` prunes them all."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@click.group("history", cls=_HistoryGroup)
def history_group() -> None:
    """A repo's tags over time (`tagger history ID`), and history retention (`tagger history prune`)."""


@history_group.command("prune")
@click.option("--keep", type=int, metavar="N", help="Keep each repo's N newest replaced versions.")
@click.option("--before", type=click.DateTime(DATE_FORMATS),
              metavar="DATE", help="Prune only versions replaced before DATE (UTC when naive).")
@click.option("--dry-run", is_flag=True, help="Say what would be pruned and which rollbacks it would make "
              "impossible; change nothing.")
def prune_(keep: int | None, before: datetime | None, dry_run: bool) -> None:
    """Delete history versions past the retention: beyond each repo's N newest (--keep) and replaced before
    DATE (--before); with both, a version goes only when both say so. Runs (not rolled back) that lose a
    version they replaced can no longer be rolled back: listed here, and `tagger rollback` refuses them."""
    report = prune(settings_with(), keep=keep, before=None if before is None else as_utc(before), dry_run=dry_run)
    verb = "would prune" if dry_run else "pruned"
    click.echo(f"{verb} {report.versions} history versions")
    if report.lost_rollbacks:
        runs = ", ".join(f"{run} ({n} versions)" for run, n in sorted(report.lost_rollbacks.items())[:50])
        what = "would no longer be possible" if dry_run else "are no longer possible"
        click.echo(f"rollbacks that {what}: {len(report.lost_rollbacks)} runs: {runs}", err=True)


@history_group.command("show", hidden=True)
@click.argument("repo_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version, newest first.")
def history_(repo_id: str, as_json: bool) -> None:
    """A repo's tags over time, newest first: the live version, then each one it replaced."""
    versions, pin, names = history(settings_with(), repo_id)
    if as_json:
        for version in versions:
            click.echo(json.dumps(jsonable(version.as_dict())))
        return
    if pin:
        click.echo(f"pinned by {pin.set_by} at {when(pin.set_at)}" + (f": {pin.note}" if pin.note else ""))
    if not versions:
        click.echo("never tagged")
    for version in versions:
        tags = ", ".join(names.get(i, str(i)) for i in version.tag_ids) or "(none)"
        config = version.configuration
        source = (f"manual ({config.model})" if version.pinned
                  else f"run {version.run_id or '-'} {config.backend}/{config.model} "
                       f"{config.prompt_version} taxonomy {config.taxonomy_version}")
        until = ("live" if version.replaced_reason is None
                 else f"replaced {when(version.replaced_at)} by {version.replaced_reason}"
                 + (f" {version.replaced_by_run}" if version.replaced_by_run else ""))
        click.echo(f"{when(version.tagged_at)}  {tags:<40} {source}  [{until}]")


@click.group()
def tags() -> None:
    """Tags pinned by hand: no run, refresh, sweep or promote replaces them."""


@tags.command("set")
@click.argument("repo_id", metavar="ID")
@click.argument("tag_names", metavar="TAG[,TAG...]")
@click.option("--note", default="", help="Why (kept with who and when).")
def tags_set(repo_id: str, tag_names: str, note: str) -> None:
    """Pin a repo's tags (at most 3 names of the taxonomy); `tagger export` marks them "source": "manual"."""
    pinned = set_manual_tags(settings_with(), repo_id, tag_names, set_by=operator(), note=note)
    click.echo(f"{repo_id}: pinned {', '.join(pinned)}")


@tags.command("unset")
@click.argument("repo_id", metavar="ID")
def tags_unset(repo_id: str) -> None:
    """Release a repo's pinned tags: its last machine result comes back (or none: the next refresh tags it)."""
    unset_manual_tags(settings_with(), repo_id)
    click.echo(f"{repo_id}: pin released")
