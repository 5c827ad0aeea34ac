"""The `tagger` command. Each command group lives in its own module and registers itself on ``cli``."""

from __future__ import annotations

import os
import sys

import click

from cli.base import cli

# Importing the modules registers their commands.
from cli import bench, demo, dlq, ops, pipeline, quality, runs, worker  # noqa: F401  isort: skip


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted: what was already committed is kept; running the same command again is safe", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        if "--debug" in sys.argv[1:] or os.environ.get("TAGGER_LOG_LEVEL", "").upper() == "DEBUG":
            raise
        first_line = next((line for line in str(exc).splitlines() if line.strip()), "")
        click.echo(f"error: unexpected {type(exc).__name__}: {first_line}; this is a bug: please report it with the "
                   "output of the same command run with --debug", err=True)
        sys.exit(1)
