"""The `tagger` command. Each command lives in a module of its own, named in ``cli.base.COMMANDS`` and
imported only when it runs: `tagger --help` or `tagger status` loads neither Celery nor the backends."""

from __future__ import annotations

import os
import sys

import click

from cli.base import cli

__all__ = ["cli", "main"]


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
