"""`tagger status`: progress at a glance. A module of its own that imports only the database and the
broker client, so the command an operator runs most starts fast."""

from __future__ import annotations

import json
from datetime import datetime

import click

from cli.base import jsonable, settings_with, when
from db.engine import transaction
from db.jobs import status_counts
from db.results import tag_rate
from db.runs import get_run, run_counts
from tagger.errors import BrokerUnavailable, InputError
from workers.queues import queue_depth


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: repos, tagged, pending, failed, dead, "
              "queue_depth, rate_per_s, eta_s.")
@click.option("--run", "run_id", type=int, help="One run instead: its configuration, selection and counts.")
def status(as_json: bool, run_id: int | None) -> None:
    """Repos, tagged, pending, failed, dead letters, queue depth, rate and ETA."""
    if run_id is not None:
        show_run(run_id, as_json)
        return
    settings = settings_with()
    with transaction(settings.database_url) as conn:
        counts: dict[str, object] = dict(status_counts(conn))
        rate = tag_rate(conn)
    try:
        counts["queue_depth"] = queue_depth(settings.broker_url, settings.queue)
    except BrokerUnavailable as exc:
        counts["queue_depth"] = -1
        click.echo(f"warning: {exc}", err=True)
    counts["rate_per_s"] = round(rate, 2)
    outstanding = int(counts["pending"]) + int(counts["failed"])  # type: ignore[call-overload]
    counts["eta_s"] = round(outstanding / rate) if rate > 0 else None
    if as_json:
        click.echo(json.dumps(counts))
        return
    for key in ("repos", "tagged", "pending", "failed", "dead", "queue_depth", "rate_per_s", "eta_s"):
        click.echo(f"{key:<12} {counts[key] if counts[key] is not None else '-'}")


def show_run(run_id: int, as_json: bool) -> None:
    """`tagger status --run ID`: one run, its configuration and its counts. (producer.runs.find_run reads
    the same, but importing the producer would load Celery for a look at one row.)"""
    with transaction(settings_with().database_url) as conn:
        run = get_run(conn, run_id)
        if run is None:
            raise InputError(f"there is no run {run_id} (see `tagger runs`)")
        counts = run_counts(conn, run)
    if as_json:
        click.echo(json.dumps(jsonable(run.as_dict() | {"counts": counts})))
        return
    for key, value in run.as_dict().items():
        click.echo(f"{key:<22} {when(value) if isinstance(value, datetime) else value if value is not None else '-'}")
    for key, value in counts.items():
        click.echo(f"{key:<22} {value}")
