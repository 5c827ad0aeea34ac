"""Long-running processes: the Celery worker."""

from __future__ import annotations

import click

from tagger.cli.base import cli
from tagger.settings import get_settings


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--pool", type=click.Choice(["solo", "prefork", "threads"]), default="solo", show_default=True,
              help="solo for GPU workers (CUDA cannot survive a fork): one model, one batch at a time.")
@click.option("--concurrency", type=click.IntRange(1), default=1, show_default=True,
              help="Processes (prefork) or threads; each prefork process loads its own model.")
@click.option("--hostname", help="Celery node name (default: tagger@<host>).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(pool: str, concurrency: int, hostname: str | None, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker that holds one model (GPU: one worker per GPU).

    The model loads once per worker process, at start-up. Extra arguments go to `celery worker`.
    """
    from workers.app import app

    settings = get_settings()
    argv = ["worker", "--pool", pool, "--concurrency", str(concurrency), "--queues", settings.queue,
            "--loglevel", settings.log_level, "--without-gossip", "--without-mingle"]
    if hostname:
        argv += ["--hostname", hostname]
    app.conf.worker_pool = pool
    app.worker_main(argv=[*argv, *celery_args])
