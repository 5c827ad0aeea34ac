"""`tagger status`: progress at a glance. A module of its own that imports only the database, the broker
client and the progress view, so the command an operator runs most starts fast."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from cli.base import jsonable, when
from cli.settings import settings_with
from db.engine import transaction
from db.jobs import status_counts
from db.progress import RunProgress, recent_run_ids, runs_progress
from db.runs import existing_run, run_counts
from producer.progress import overall_pace, pace, read_progress, run_state, with_true_counts
from producer.progress import watch as watch_runs
from tagger.errors import BrokerUnavailable
from tagger.settings import Settings
from workers.queues import queue_depth

RECENT_RUNS = 20  # the runs `tagger status` looks at for the running ones


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: repos, tagged, pending, failed, dead, "
              "queue_depth, rate_per_s, eta_s, and runs (each running or latest run's progress).")
@click.option("--run", "run_id", type=int, help="One run instead: its configuration, selection, counts, state, pace.")
@click.option("--watch", is_flag=True, help="Live bars of repos tagged per run (the running ones, or --run), until "
              "they are done; Ctrl-C stops watching, not the work.")
def status(as_json: bool, run_id: int | None, watch: bool) -> None:
    """Repos, tagged, pending, failed, dead letters, queue depth, rate and ETA.

    The rate is each running run's own pace, repos it tagged since it started over the time since, so it
    is right from the first seconds, and a finished run keeps its final pace; the ETA is what the
    running runs have left at that pace.
    """
    settings = settings_with()
    if watch:
        _watch(settings, run_id)
        return
    if run_id is not None:
        show_run(settings, run_id, as_json)
        return
    with transaction(settings.database_url) as conn:
        counts: dict[str, object] = dict(status_counts(conn))
        runs = runs_progress(conn, recent_run_ids(conn, RECENT_RUNS))
    try:
        counts["queue_depth"] = queue_depth(settings.broker_url, settings.queue)
    except BrokerUnavailable as exc:
        counts["queue_depth"] = -1
        click.echo(f"warning: {exc}", err=True)
    now = datetime.now(UTC)
    live = [run for run in runs if run.kind == "live"]
    running = [run for run in live if run.pending]
    shown = running or live[:1]  # the running runs, or the last one (its final pace)
    rate, eta = overall_pace(running, now) if running else (pace(live[0], now).rate_per_s if live else None, None)
    outstanding = int(counts["pending"]) + int(counts["failed"])  # type: ignore[call-overload]
    counts["rate_per_s"] = round(rate, 2) if rate is not None else None
    counts["eta_s"] = round(eta) if eta is not None and running else (0 if not outstanding else None)
    lines = [_run_line(run, now) for run in shown]
    counts["runs"] = lines
    if as_json:
        click.echo(json.dumps(counts))
        return
    for key in ("repos", "tagged", "pending", "failed", "dead", "queue_depth", "rate_per_s", "eta_s"):
        click.echo(f"{key:<12} {counts[key] if counts[key] is not None else '-'}")
    for line in lines:
        click.echo(f"run {line['id']:<8} {line['state']}: {line['tagged']} of {line['enqueued']} tagged, "
                   f"{line['pending']} pending, {line['dead']} dead; {_per_s(line['rate_per_s'])}"
                   + (f", ETA {line['eta_s']} s" if line["eta_s"] and line["state"] == "running" else ""))


def _per_s(rate: object) -> str:
    return f"{rate:.2f}/s" if isinstance(rate, float | int) else "-/s"


def _run_line(run: RunProgress, now: datetime) -> dict[str, object]:
    step = pace(run, now)
    return {"id": run.run_id, "kind": run.kind, "state": run_state(run), "enqueued": run.enqueued,
            "tagged": run.tagged, "pending": run.pending, "dead": run.dead,
            "rate_per_s": round(step.rate_per_s, 2) if step.rate_per_s is not None else None,
            "eta_s": round(step.eta_s) if step.eta_s is not None else None}


def show_run(settings: Settings, run_id: int, as_json: bool) -> None:
    """`tagger status --run ID`: one run, its configuration, its counts, its state and pace. (producer.runs
    .find_run reads the same, but importing the producer's runs would load Celery for a look at one row.)"""
    with transaction(settings.database_url) as conn:
        run = existing_run(conn, run_id)
        (progress,) = runs_progress(conn, [run_id])
        counts = with_true_counts(run_counts(conn, run), progress)
    step = pace(progress, datetime.now(UTC))
    shown = run.as_dict() | {
        "state": run_state(progress), "rate_per_s": round(step.rate_per_s, 2) if step.rate_per_s is not None else None,
        "eta_s": round(step.eta_s) if step.eta_s is not None else None}
    if as_json:
        click.echo(json.dumps(jsonable(shown | {"counts": counts})))
        return
    for key, value in shown.items():
        click.echo(f"{key:<22} {when(value) if isinstance(value, datetime) else value if value is not None else '-'}")
    for key, value in counts.items():
        click.echo(f"{key:<22} {value}")


def _watch(settings: Settings, run_id: int | None) -> None:
    if run_id is not None:
        with transaction(settings.database_url) as conn:
            existing_run(conn, run_id)
        ids = [run_id]
    else:
        recent = read_progress(settings, limit=RECENT_RUNS)
        ids = [run.run_id for run in recent if run.pending] or [run.run_id for run in recent[:1]]
        if not ids:
            click.echo("no runs yet", err=True)
            return
    try:
        final = watch_runs(settings, ids)
    except KeyboardInterrupt:
        click.echo("stopped watching (the work goes on)", err=True)
        return
    for run in final:
        click.echo(f"run {run.run_id}: {run_state(run)}, {run.tagged} of {run.enqueued} tagged, {run.dead} dead")
