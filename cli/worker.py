"""Long-running processes: the Celery worker."""

from __future__ import annotations

import click

from cli.settings import settings_with
from db.engine import transaction
from db.taxonomy import current_taxonomy_version
from producer.canary import check_canary_worker
from producer.enqueue import canary_settings
from producer.runs import find_run
from tagger.backends import check_backend, configured_model
from tagger.errors import ConfigError, InputError
from tagger.metrics_http import MetricsServer, serve_metrics
from tagger.settings import Settings
from workers.metrics import WorkerMetrics
from workers.runtime import Runtime
from workers.tasks import create_worker_app


def start_worker_metrics(settings: Settings, pool: str) -> tuple[WorkerMetrics, MetricsServer | None]:
    """This worker's counters, served on TAGGER_WORKER_METRICS_PORT when it is set; bound before the
    model loads, so a port taken fails in a second, not after a minute of loading."""
    metrics = WorkerMetrics()
    port = settings.worker_metrics_port
    if not port:
        return metrics, None
    if pool == "prefork":
        raise ConfigError("TAGGER_WORKER_METRICS_PORT needs the threads or solo pool: a prefork pool's children "
                          "count apart from the process that would serve them")
    try:
        server = serve_metrics(settings.worker_metrics_address, port, metrics.registry,
                               lambda: (True, {"process": "worker"}))
    except OSError as exc:
        raise InputError(f"cannot serve worker metrics on {settings.worker_metrics_address}:{port}: "
                         f"{exc.strerror or exc}: set TAGGER_WORKER_METRICS_PORT to a free port (each worker on a "
                         "host needs its own), or 0 for none") from exc
    click.echo(f"worker metrics on http://{settings.worker_metrics_address}:{server.port}/metrics", err=True)
    return metrics, server


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--pool", type=click.Choice(["threads", "solo", "prefork"]), default="threads", show_default=True,
              help="threads: one model shared by the threads, one batch in it at a time while the other "
              "threads read, prepare and write theirs (the model never waits on Python or Postgres). "
              "solo: one batch at a time, start to finish. prefork: a model per process (CPU only: CUDA "
              "cannot survive a fork).")
@click.option("--concurrency", type=click.IntRange(1), default=2, show_default=True,
              help="Threads (threads: 2 keep the model busy), or processes (prefork; each loads its own model).")
@click.option("--hostname", help="Celery node name (default: tagger@<host>).")
@click.option("--canary", "canary_run", type=int, metavar="RUN", help="Serve canary RUN only: consume its queue "
              "(<TAGGER_QUEUE>.canary.RUN) into its shadow results. Refuses to start unless these settings give "
              "the canary's configuration.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(pool: str, concurrency: int, hostname: str | None, canary_run: int | None,
           celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker that holds one model (GPU: one worker per GPU).

    The model loads once per worker process, at start-up. Each message is a batch of repo ids: one
    query reads their READMEs, one backend call tags them, one transaction writes the results. With
    the default threads pool, the next batch is read and prepared, and the last one written, while the
    model works on the current one. Extra arguments go to `celery worker`.
    """
    settings = settings_with()
    metrics, _server = start_worker_metrics(settings, pool)
    if canary_run is not None:
        if pool == "prefork":
            raise click.UsageError("--canary runs with the threads or solo pool")
        run = find_run(settings, canary_run, kind="canary")
        settings = canary_settings(settings, canary_run)
        runtime = Runtime.start(settings)
        check_canary_worker(run.run, runtime.configuration)
        app = create_worker_app(settings, runtime, canary_run=canary_run, metrics=metrics)
    elif pool == "prefork":
        # Each child loads its own model after the fork; the parent only checks that it could.
        configured_model(settings)
        check_backend(settings)
        with transaction(settings.database_url) as conn:
            if current_taxonomy_version(conn) is None:
                raise ConfigError("no taxonomy in the database: run `tagger db upgrade` first")
        app = create_worker_app(settings, metrics=metrics)
    else:
        # The model loads before the first message is taken: a worker that cannot work exits here.
        runtime = Runtime.start(settings)
        app = create_worker_app(settings, runtime, metrics=metrics)
    argv = ["worker", "--pool", pool, "--concurrency", str(concurrency), "--queues", settings.queue,
            "--loglevel", settings.log_level, "--without-gossip", "--without-mingle"]
    if hostname:
        argv += ["--hostname", hostname]
    app.conf.worker_pool = pool
    try:
        app.worker_main(argv=[*argv, *celery_args])
    finally:
        # Warm shutdown (SIGTERM) ends here: the model goes with the worker, vLLM's engine processes
        # included (a SIGKILLed worker never gets here: the vllm backend's reaper covers that).
        if pool != "prefork":
            runtime.close()
