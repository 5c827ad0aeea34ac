"""The root command group: settings shown in --help, read once per command, logging configured once."""

from __future__ import annotations

import getpass
import os
import sys
import traceback

import click

from tagger.errors import ConfigError, InputError, TaggerError
from tagger.logs import configure_logging
from tagger.settings import Settings, env_help, load_settings

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 120}
DEBUG_KEY = "tagger.debug"  # in the context's meta: --debug was given, or TAGGER_LOG_LEVEL=DEBUG


class UserError(click.ClickException):
    """A condition the user caused or can fix: one line on stderr, no traceback."""

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class BadInput(UserError):
    """Bad input or settings: the user's to fix, exit status 2 (as for a usage error)."""

    exit_code = 2


class TaggerGroup(click.Group):
    """Translates the product's errors into exit statuses at the top: 2 for bad input or settings, 1 for
    the rest (a service down, a model that failed)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (InputError, ConfigError) as exc:
            _show_traceback(ctx, exc)
            raise BadInput(str(exc)) from exc
        except TaggerError as exc:
            _show_traceback(ctx, exc)
            raise UserError(f"{type(exc).__name__}: {exc}") from exc
        except BrokenPipeError:
            # The reader of our output went away (`tagger export | head -1`): it has all it wanted. (Click
            # would exit 1 for it.) Standard output now goes to /dev/null, so that the interpreter's last
            # flush does not fail on the broken pipe again.
            _silence_stdout()
            raise click.exceptions.Exit(0) from None
        except OSError as exc:  # a file, directory or port the user named
            _show_traceback(ctx, exc)
            raise UserError(describe_os_error(exc)) from exc


def _silence_stdout() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test's runner)
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file or socket operation: what, on which file, why."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"cannot use {exc.filename}: {reason}"
    return reason


def debugging(ctx: click.Context | None = None) -> bool:
    ctx = ctx or click.get_current_context(silent=True)
    return bool(ctx and ctx.meta.get(DEBUG_KEY))


def _show_traceback(ctx: click.Context, exc: BaseException) -> None:
    if debugging(ctx):
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)


@click.group(cls=TaggerGroup, context_settings=CONTEXT, epilog=env_help())
@click.version_option(package_name="repo-tagger")
@click.option("--debug", is_flag=True, help="On an error, show its full traceback (as TAGGER_LOG_LEVEL=DEBUG does), "
              "and log at DEBUG.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
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
    try:
        settings: Settings | None = load_settings()
    except ConfigError:
        settings = None  # `COMMAND --help` still works; the command itself reports the bad setting
    if settings is not None:
        debug = debug or settings.log_level == "DEBUG"
        configure_logging("DEBUG" if debug else settings.log_level, settings.log_format)
    elif debug:
        configure_logging("DEBUG")
    ctx.meta[DEBUG_KEY] = debug
    ctx.obj = settings


def settings_with(**overrides: object) -> Settings:
    """This command's settings: TAGGER_* variables, with the command-line options that were given on top.
    Commands pass them down; nothing below the CLI reads the environment."""
    given = {k: v for k, v in overrides.items() if v is not None}
    loaded = click.get_current_context().find_object(Settings)
    if loaded is not None and not given:
        return loaded
    return load_settings(**given)


def operator() -> str:
    """Who runs this command, for the runs and pins it records: the login name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment nor in the password database
        return "unknown"
