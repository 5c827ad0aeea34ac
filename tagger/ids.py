"""Repo ids: text, but never text that cannot be stored, printed or passed on a command line."""

from __future__ import annotations

import re

from tagger.errors import InputError

MAX_ID_LENGTH = 200
# Control characters (Unicode category Cc, U+0085 included), line and paragraph separators (Zl, Zp: a
# reader that splits lines would see two records), bidirectional overrides and isolates (an id that
# displays as another), and lone surrogates (invalid UTF-8, read with surrogateescape).
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


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
    # Checked before Unicode's strip(), which would silently drop a trailing U+0085 or U+2028.
    if _FORBIDDEN.search(checked := raw.strip(" \t\r\n")):
        # Line separators and bidirectional controls count as control characters here.
        raise InputError(f"repo id {checked!r} contains control characters or invalid UTF-8")
    if len(repo_id) > MAX_ID_LENGTH:
        raise InputError(f"repo id is longer than {MAX_ID_LENGTH} characters: {repo_id[:40]!r}...")
    return repo_id
