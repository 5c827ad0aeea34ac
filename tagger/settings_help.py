"""The ``TAGGER_*`` variables as ``tagger --help`` lists them: a text generated from
:class:`tagger.settings.Settings`, so that help loads no pydantic (a tenth of a second or more). A unit test
checks that the text is the model's, and rewrites it (``python -m tests.unit.test_settings_help``)."""

from __future__ import annotations

from pathlib import Path

SETTINGS_HELP_FILE = Path(__file__).parent / "data" / "settings_help.txt"


def settings_help() -> str:
    """Each variable with its description and default, one a line, under a heading."""
    return SETTINGS_HELP_FILE.read_text(encoding="utf-8")
