"""What every command runs first, its settings read and logging configured, and the settings it passes
down. Imported when a command runs (cli.base.START), never for `tagger --help`: pydantic and structlog
are most of what a bare `tagger` would otherwise load."""

from __future__ import annotations

import click

from tagger.errors import ConfigError
from tagger.logs import configure_logging
from tagger.settings import Settings, load_settings


def start(debug: bool) -> tuple[Settings | None, bool]:
    """The root group's part of every command: settings from the TAGGER_* variables (None when one is bad:
    `COMMAND --help` still works, the command itself reports it), logging at their level (DEBUG with
    --debug). Returns the settings and whether to debug."""
    try:
        settings: Settings | None = load_settings()
    except ConfigError:
        settings = None
    if settings is not None:
        debug = debug or settings.log_level == "DEBUG"
        configure_logging("DEBUG" if debug else settings.log_level, settings.log_format)
    elif debug:
        configure_logging("DEBUG")
    return settings, debug


def settings_with(**overrides: object) -> Settings:
    """This command's settings: TAGGER_* variables, with the command-line options that were given on top.
    Commands pass them down; nothing below the CLI reads the environment."""
    given = {k: v for k, v in overrides.items() if v is not None}
    loaded = click.get_current_context().find_object(Settings)
    if loaded is not None and not given:
        return loaded
    return load_settings(**given)
