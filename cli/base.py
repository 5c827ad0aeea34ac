"""The root command group: settings shown in --help, read once per command (cli.settings), logging configured
once. Light by design: `tagger --help` and `--version` load nothing but Click and this."""

from __future__ import annotations

import getpass
import importlib
import os
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click

from tagger.errors import ConfigError, InputError, TaggerError
from tagger.settings_help import settings_help
from tagger.urls import scrub

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 120}
DEBUG_KEY = "tagger.debug"  # in the context's meta: --debug was given, or TAGGER_LOG_LEVEL=DEBUG
URLS_KEY = "tagger.urls"  # in the context's meta: the service URLs of the settings read, whose secrets no message shows
# What every command runs first (its settings read, logging configured), in a module imported only then, as
# the commands' are: `tagger --help` and `--version` load neither pydantic nor structlog.
START = "cli.settings:start"
# The dates and times options accept: a date, or a time with or without an offset (as `export` prints it).
DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d %H:%M:%S",
                "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"]


def as_utc(moment: datetime) -> datetime:
    """A time given without an offset is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


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
            raise BadInput(shown(ctx, str(exc))) from exc
        except TaggerError as exc:
            _show_traceback(ctx, exc)
            raise UserError(shown(ctx, f"{type(exc).__name__}: {exc}")) from exc
        except BrokenPipeError:
            # The reader of our output went away (`tagger export | head -1`): it has all it wanted. (Click
            # would exit 1 for it.) Standard output now goes to /dev/null, so that the interpreter's last
            # flush does not fail on the broken pipe again.
            _silence_stdout()
            raise click.exceptions.Exit(0) from None
        except OSError as exc:  # a file, directory or port the user named
            _show_traceback(ctx, exc)
            raise UserError(shown(ctx, describe_os_error(exc))) from exc


def loaded(target: str) -> Any:
    """``module:attribute``, its module imported now (if not yet)."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True, slots=True)
class LazyCommand:
    """A command known by name and one-line help, its module imported only when it runs: `tagger status`
    need not load Celery, nor `tagger --help` anything at all."""

    target: str  # "module:attribute", the click command
    summary: str  # its one-line help, as `tagger --help` lists it

    def load(self) -> click.Command:
        command = loaded(self.target)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


class LazyGroup(TaggerGroup):
    """The root group: its commands come from a registry of :class:`LazyCommand` and load on demand; its
    epilog, the settings' listing, is read only when help is shown."""

    def __init__(self, *args: object, lazy: Mapping[str, LazyCommand], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.add_command(self.lazy[cmd_name].load(), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's listing, from the registry's help: listing the commands imports none of them."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            # A command not loaded yet is listed from its summary, cut as Click cuts a command's help.
            command = self.commands.get(name) or click.Command(name, help=self.lazy[name].summary)
            if not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text("\b\n" + settings_help().rstrip("\n"))


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
        click.echo(shown(ctx, "".join(traceback.format_exception(exc)).rstrip()), err=True)


def shown(ctx: click.Context | None, text: str) -> str:
    """``text`` as it may be shown: without the passwords of the service URLs in use (the environment's,
    and this command's own, such as the demo's), whoever wrote the message."""
    urls = [os.environ.get("TAGGER_DATABASE_URL", ""), os.environ.get("TAGGER_BROKER_URL", "")]
    if ctx is not None:
        urls += ctx.meta.get(URLS_KEY, [])
    return scrub(text, *urls)


# Every command of `tagger`: name → where it lives and its one-line help (tests/unit/test_cli_lazy.py checks
# that each help is the command's own).
COMMANDS: dict[str, LazyCommand] = {
    name: LazyCommand(target, help_)
    for name, target, help_ in (
        ("bench", "cli.bench:bench", "Measure the pipeline: overhead vs raw upserts, model path vs bare llama.cpp, "
         "prefix reuse, scale, batch size, the vLLM model path vs bare LLM.chat, and the GPU estimate."),
        ("beat", "cli.ops:beat", "Run Celery beat: the stale refresh every TAGGER_REFRESH_INTERVAL_S, the sweep "
         "every TAGGER_SWEEP_INTERVAL_S."),
        ("calibrate", "cli.quality:calibrate", "Fit the scoring weights and threshold of a backend and model on "
         "labelled READMEs, report them with k-fold cross-validated figures, and store them as the profile that "
         "backend and model use."),
        ("canary", "cli.canary:canary", "Tag a random sample with this configuration into shadow results that no "
         "live reader sees."),
        ("db", "cli.pipeline:db", "Database schema."),
        ("demo", "cli.demo:demo", "The production system, small: tag the sample READMEs on this machine and "
         "print the JSON."),
        ("diff", "cli.runs:diff", "A canary's shadow results against the live ones on its sample: what promoting it "
         "would change."),
        ("dlq", "cli.dlq:dlq", "Dead letters: repos that failed permanently or too often."),
        ("enqueue", "cli.pipeline:enqueue", "Send repos to the workers, in batches, pausing while the queue is "
         "full."),
        ("eval", "cli.quality:evaluate", "Tag every README of a gold file and report micro precision, recall and F1, "
         "hit rate, primary@3, the commonest mistakes and speed; with a scored backend, the precision/recall curve "
         "over the threshold, the policies marked (--plot FILE.png draws it)."),
        ("export", "cli.export:export", 'The results as JSON Lines, one object per tagged repo: {"id": ..., '
         '"tags": [{"id", "name"}, ...]}; tags pinned by hand add "source": "manual".'),
        ("flower", "cli.ops:flower", "Serve Celery's Flower (workers, tasks; Prometheus metrics at /metrics), "
         "behind basic auth."),
        ("health", "cli.ops:health", "Can the pipeline work: the database, the broker, and at least one worker "
         "answering a ping."),
        ("history", "cli.runs:history_group", "A repo's tags over time (`tagger history ID`), and history "
         "retention (`tagger history prune`)."),
        ("import", "cli.pipeline:import_", 'Add or update repos from FILE, JSON Lines of {"id", "name", "readme"}; '
         "`-` reads standard input."),
        ("metrics", "cli.ops:metrics", "Serve the pipeline's state to Prometheus: /metrics, and /healthz "
         "(database and broker)."),
        ("promote", "cli.runs:promote", "Write a canary's results to live (pinned repos excepted)."),
        ("review", "cli.pipeline:review", "The least confident results first: the repos whose tags most deserve a "
         "human look."),
        ("rollback", "cli.runs:rollback_", "Restore, for every repo RUN changed, the version before it; repos "
         "changed again since, or pinned, are reported and left alone."),
        ("runs", "cli.runs:runs_", "The runs, newest first: who started them, the configuration, the selection, "
         "their progress."),
        ("status", "cli.status:status", "Repos, tagged, pending, failed, dead letters, queue depth, rate and ETA."),
        ("sweep", "cli.pipeline:sweep", "Re-enqueue repos queued too long without a result (messages lost by the "
         "broker)."),
        ("tags", "cli.runs:tags", "Tags pinned by hand: no run, refresh, sweep or promote replaces them."),
        ("taxonomy", "cli.pipeline:taxonomy", "The tag taxonomy."),
        ("worker", "cli.worker:worker", "Run a Celery worker that holds one model (GPU: one worker per GPU)."),
    )
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings=CONTEXT)
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
    settings, ctx.meta[DEBUG_KEY] = loaded(START)(debug)
    if settings is not None:
        ctx.meta[URLS_KEY] = [settings.database_url, settings.broker_url]
    ctx.obj = settings


def when(value: datetime | None) -> str:
    """A time as the tables show it (UTC, to the second); '-' for none."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def jsonable(value: Any) -> Any:
    """``value`` with its datetimes as ISO strings, for json.dumps."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def operator() -> str:
    """Who runs this command, for the runs and pins it records: the login name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment nor in the password database
        return "unknown"
