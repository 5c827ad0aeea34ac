"""The `tagger` entry point: an error nobody foresaw is one line unless --debug asks for the traceback."""

from __future__ import annotations

import sys

import pytest

import cli
from cli import pipeline


def _boom(**_: object) -> None:
    raise RuntimeError("boom\nsecond line of a long message")


def test_an_unexpected_error_is_one_line_asking_for_a_report(monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "settings_with", _boom)
    monkeypatch.setattr(sys, "argv", ["tagger", "sweep"])
    monkeypatch.delenv("TAGGER_LOG_LEVEL", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    assert capsys.readouterr().err == ("error: unexpected RuntimeError: boom; this is a bug: please report it with "
                                       "the output of the same command run with --debug\n")


def test_with_debug_the_unexpected_error_propagates_with_its_traceback(monkeypatch):
    monkeypatch.setattr(pipeline, "settings_with", _boom)
    monkeypatch.setattr(sys, "argv", ["tagger", "--debug", "sweep"])
    with pytest.raises(RuntimeError, match="boom"):
        cli.main()
