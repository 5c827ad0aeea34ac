"""`tagger --help` lists the TAGGER_* variables from a text generated from the Settings model (help then
loads no pydantic): that text must be the model's. `python -m tests.unit.test_settings_help` rewrites it."""

from __future__ import annotations

from pathlib import Path

from tagger.settings import Settings
from tagger.settings_help import SETTINGS_HELP_FILE, settings_help
from tagger.taxonomy import DEFAULT_TAXONOMY


def rendered() -> str:
    lines = ["Settings (environment variables):"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path):
            default = default.name if default == DEFAULT_TAXONOMY else str(default)
        lines.append(f"  TAGGER_{name.upper():<24} {field.description} [default: {default!r}]")
    return "\n".join(lines) + "\n"


def test_the_listing_is_the_settings_model_s_every_variable_with_its_description_and_default():
    assert settings_help() == rendered(), "rewrite it: python -m tests.unit.test_settings_help"


if __name__ == "__main__":
    SETTINGS_HELP_FILE.write_text(rendered(), encoding="utf-8")
