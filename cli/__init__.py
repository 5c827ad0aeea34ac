"""The `tagger` command. Each command group lives in its own module and registers itself on ``cli``."""

from __future__ import annotations

import sys

import click

from cli.base import cli

# Importing the modules registers their commands.
from cli import bench, demo, dlq, ops, pipeline, quality, runs, worker  # noqa: F401  isort: skip


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
