"""Service URLs as the product shows them: never with their secrets.

Every message, warning, log line or report that names a database or broker URL passes it through
:func:`masked` first, so a password in ``TAGGER_DATABASE_URL`` or ``TAGGER_BROKER_URL`` never reaches a
terminal, a log file or a monitoring system. Works on URLs that do not parse (a port that is not a
number, an unknown scheme): those are exactly the ones error messages quote.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

# scheme://[user[:password]@]rest: the userinfo runs to the *last* '@' before the path, so a password
# holding an unescaped '@' or '/' is still masked whole.
# The scheme is optional: "user:password@host/db", a URL missing its scheme, is what a typo gives.
_USERINFO = re.compile(r"^(?P<scheme>(?:[A-Za-z][A-Za-z0-9+.\-]*://)?)(?P<userinfo>.*)@(?P<host>[^@]*)$", re.DOTALL)
# Secrets passed as query parameters (libpq's password=, sslpassword=; kombu's transport options).
_QUERY_SECRET = re.compile(r"(?i)([?&;](?:password|passwd|pwd|sslpassword|sslkey_password|secret|token)=)[^&;#]*")


def masked(url: object) -> str:
    """``url`` with its password (and any password-like query parameter) replaced by ``***``; the user,
    host, port and path stay, as they are what one needs to tell which service is meant."""
    text = str(url)
    match = _USERINFO.match(text)
    if match:
        user, colon, password = match["userinfo"].partition(":")
        if colon and password:
            text = f"{match['scheme']}{user}:{MASK}@{match['host']}"
    return _QUERY_SECRET.sub(rf"\g<1>{MASK}", text)


# A URL with a password anywhere in free text (a library's message, a traceback): scheme://user:secret@
_URL_IN_TEXT = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:'\"]*):([^\s@'\"]+)@")


def scrub(text: str, *urls: str) -> str:
    """``text`` (a driver's or validator's message, a traceback, a log line) with every one of ``urls``,
    each of their passwords, and any other URL's password replaced by the masked form: for text we do not
    write ourselves."""
    for url in urls:
        if not url:
            continue
        text = text.replace(url, masked(url))
        for secret in secrets_of(url):
            text = text.replace(secret, MASK)
    return _URL_IN_TEXT.sub(rf"\g<1>:{MASK}@", text)


def secrets_of(url: str) -> list[str]:
    """The passwords ``url`` holds, raw and as written (percent-encoded), longest first."""
    found: list[str] = []
    match = _USERINFO.match(url)
    if match:
        _, colon, password = match["userinfo"].partition(":")
        if colon and password:
            found += [password, unquote(password)]
    for param in _QUERY_SECRET.finditer(url):
        end = url.find("&", param.end(1))
        value = url[param.end(1):] if end < 0 else url[param.end(1):end]
        value = value.split("#", 1)[0].split(";", 1)[0]
        if value:
            found += [value, unquote(value)]
    return sorted({s for s in found if s}, key=len, reverse=True)
