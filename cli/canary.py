"""`tagger canary`: a shadow canary of this configuration over a random sample. A module of its own: the
one re-tagging command that sends to the queue, so the others load no Celery."""

from __future__ import annotations

import random

import click

from cli.base import operator
from cli.settings import settings_with
from producer.canary import start_canary
from producer.enqueue import RunSpec


@click.command()
@click.option("--sample", "size", type=int, required=True, help="Repos in the sample (drawn at random).")
@click.option("--seed", type=int, help="Seed of the draw: the same seed over the same index draws the same "
              "sample. Default: a random one, printed.")
@click.option("--label", help="A note recorded with the run (what is being tried).")
def canary(size: int, seed: int | None, label: str | None) -> None:
    """Tag a random sample with this configuration into shadow results that no live reader sees.

    \b
    The configuration is the TAGGER_* settings, as a worker takes them (backend, model, prompt,
    shortlist...). The sample goes to a queue of its own, <TAGGER_QUEUE>.canary.<RUN>, which only
    a worker started with the same settings and `--canary RUN` consumes:
      TAGGER_MODEL=new.gguf tagger canary --sample 1000 --seed 7      prints RUN
      TAGGER_MODEL=new.gguf tagger worker --canary RUN                tags the sample
      tagger diff RUN                                                 what would change
      tagger promote RUN                                              the sample's new tags go live
    """
    settings = settings_with()
    chosen = seed if seed is not None else random.SystemRandom().randrange(1, 2**31)

    def started(run_id: int, queue: str) -> None:
        click.echo(f"canary run {run_id} (seed {chosen}): start its worker with the same settings: "
                   f"tagger worker --canary {run_id}")

    report = start_canary(settings, size, chosen, RunSpec(operator(), label), on_started=started)
    click.echo(f"canary run {report.run_id}: {report.sample} repos sent in {report.batches} batches to queue "
               f"{report.queue}")
    config = " ".join(f"{k}={v}" for k, v in report.configuration.as_dict().items())
    click.echo(f"configuration: {config}")
