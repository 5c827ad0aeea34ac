"""The shadow canary's start: a configuration's run over a reproducible sample of the index, sent to a
queue of its own that only a worker of the same configuration consumes; nothing live is touched (its
diff, promotion and rollback: producer.runs). The one re-tagging operation that sends to the queue, in a
module of its own: the others load no Celery."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from db.canary import insert_shadow_queued
from db.configuration import Configuration
from db.engine import transaction
from db.repos import draw_sample
from db.runs import Run, create_run
from producer.enqueue import RunSpec, Sender, canary_settings, current_configuration
from tagger.errors import ConfigError, InputError
from tagger.settings import Settings
from workers.contract import queue_depth

log = structlog.get_logger("tagger.producer")


@dataclass
class CanaryReport:
    run_id: int
    queue: str
    sample: int
    batches: int
    configuration: Configuration


def start_canary(settings: Settings, n: int, seed: int, spec: RunSpec,
                 on_started: Callable[[int, str], None] | None = None) -> CanaryReport:
    """Record a canary run of ``settings``' configuration over a sample of ``n`` repos, and send the
    sample to the canary's queue. Nothing live is touched: job states stay as they are. ``on_started``
    (run id, queue) is called before the first batch is sent: a sample larger than the queue's high-water
    mark waits for the canary's worker, which needs the run id to start."""
    if n < 1:
        raise InputError(f"the sample must hold at least one repo, not {n}")
    configuration = current_configuration(settings)
    if configuration.taxonomy_version is None:
        raise ConfigError("no taxonomy in the database: run `tagger db upgrade` first")
    with transaction(settings.database_url) as conn:
        ids = draw_sample(conn, n, seed)
    if not ids:
        raise InputError("the index holds no repos: there is nothing to sample")
    # Redis down: say so before recording a run whose sample would wait for a message never sent.
    queue_depth(settings.broker_url, settings.queue)
    with transaction(settings.database_url) as conn:
        run_id = create_run(conn, kind="canary", started_by=spec.started_by, label=spec.label,
                            selection=f"sample {n} seed {seed}", configuration=configuration)
        insert_shadow_queued(conn, run_id, ids)
    log.info("run_started", run_id=run_id, kind="canary", started_by=spec.started_by, label=spec.label,
             sample=len(ids), seed=seed, **configuration.as_dict())
    shadow = canary_settings(settings, run_id)
    if on_started is not None:
        on_started(run_id, shadow.queue)
    sender = Sender(shadow, run_id=run_id, shadow=True, owns_run=True)
    with contextlib.closing(sender):
        sender.send(ids)
    return CanaryReport(run_id, shadow.queue, len(ids), sender.report.batches, configuration)


def check_canary_worker(run: Run, configuration: Configuration) -> None:
    """A canary worker must run exactly the canary's configuration; ConfigError naming the differences."""
    different = [f"{name} {mine!r} (canary: {theirs!r})"
                 for name, mine, theirs in configuration.differences(run.configuration)]
    if different:
        raise ConfigError(f"this worker does not run canary {run.id}'s configuration: " + "; ".join(different)
                          + ". Start it with the same TAGGER_* settings as `tagger canary`.")
