"""The root command group: settings shown in --help, logging configured once."""

from __future__ import annotations

import click

from tagger.logs import configure_logging
from tagger.settings import Settings, env_help, get_settings

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 120}


@click.group(context_settings=CONTEXT, epilog=env_help())
@click.version_option(package_name="repo-tagger")
def cli() -> None:
    """Tag every repository of a code index with at most 3 tags from a fixed taxonomy.

    \b
    Typical flow:
      tagger db upgrade              create/migrate the database, load the taxonomy
      tagger import repos.jsonl      add or update repos and their READMEs
      tagger worker                  run a worker (one per GPU)
      tagger enqueue --all           send repos to the workers
      tagger status                  progress
      tagger export --out tags.jsonl the results, one JSON object per repo

    \b
    Day to day:
      tagger enqueue --stale         re-tag only what changed (README, model, prompt, taxonomy)
      tagger beat                    scheduled stale refresh and sweeper
      tagger dlq list                repos that kept failing
      tagger flower / metrics        monitoring
      tagger demo                    the whole flow on this machine, no services
    """
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


def settings_with(**overrides: object) -> Settings:
    """The settings, with command-line options that were given taking precedence over TAGGER_* vars."""
    given = {k: v for k, v in overrides.items() if v is not None}
    base = get_settings()
    return base.model_copy(update=given) if given else base
