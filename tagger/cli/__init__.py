"""The `tagger` command. Each command group lives in its own module and registers itself on ``cli``."""

from __future__ import annotations

import sys

import click

from tagger.cli.base import cli
from tagger.errors import ConfigError, InputError, TaggerError

# Importing the modules registers their commands.
from tagger.cli import bench, demo, dlq, ops, pipeline, quality, worker  # noqa: F401  isort: skip


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (InputError, ConfigError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except TaggerError as exc:
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
