"""Repo ids: text, but never text that cannot be stored, printed or passed on a command line."""

from __future__ import annotations

import re

from tagger.errors import InputError

MAX_ID_LENGTH = 200
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def validate_repo_id(raw: object) -> str:
    """The id as stored: surrounding whitespace stripped. Quotes, spaces inside and SQL metacharacters
    are fine (ids only ever travel as bound parameters and JSON); control characters are not."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise InputError(f"repo id must be a string, got {type(raw).__name__}")
    repo_id = raw.strip()
    if not repo_id:
        raise InputError("repo id is empty")
    if _FORBIDDEN.search(repo_id):
        raise InputError(f"repo id {repo_id!r} contains control characters or invalid UTF-8")
    if len(repo_id) > MAX_ID_LENGTH:
        raise InputError(f"repo id is longer than {MAX_ID_LENGTH} characters: {repo_id[:40]!r}...")
    return repo_id
