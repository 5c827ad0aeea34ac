"""`tagger export`: each tagged repo's result as one JSON line, built as text by the server and streamed
by COPY (memory flat, whatever the index's size); and the incremental export, the repos whose live tags
changed since a time, through results.changed_at's index and history's replaced_at.

The JSON is jsonb's text: keys in jsonb's order (shortest first: "id", "tags", then "stale" or
"source"), as ``json.dumps(..., ensure_ascii=False)`` writes them; a score is the real's shortest text
(0.1993, as the engine rounded it and as `tagger review` shows the confidence), not its value widened
to a double (0.19930000603199005).

A line is concatenated text, not a jsonb value cast to text: each tag's object is jsonb's own text,
rendered once per export, and a result's (at most MAX_TAGS) tags are looked up by position, with no
subquery per row; the id is escaped by to_json, as jsonb escapes strings. tests/integration/
test_export_text.py holds it to jsonb's rendering.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

BLOCK = 1 << 16  # bytes of whole lines handed to the writer at a time

# A result's tags looked up one by one (concat_ws skips the NULL of a position past its last tag, and of
# an id the taxonomy no longer has); a longer array, which no writer makes (MAX_TAGS), is aggregated.
_LOOKED_UP = 3


def _tag_texts(with_scores: bool) -> str:
    """Each tag's JSON object, keyed by its id, as jsonb writes it: whole ({"id": 1, "name": "x"}) or,
    for a score to follow, without its closing brace."""
    text = "CAST(jsonb_build_object('id', id, 'name', name) AS text)"
    # MATERIALIZED: computed once. As a subquery in FROM, the planner may put it on the inner side of a
    # nested loop and aggregate the taxonomy again for every row (measured: 0.5 ms a row, 15 s for an
    # incremental export of 30,000 repos).
    return (f"WITH t(m) AS MATERIALIZED (SELECT jsonb_object_agg(CAST(id AS text), "
            f"{f'left({text}, -1)' if with_scores else text}) FROM tags) ")


def _tag(with_scores: bool, tag_id: str, n: str) -> str:
    """The JSON text of the tag ``tag_id``, the result's ``n``th (NULL if the taxonomy has no such id)."""
    text = f"(t.m ->> CAST({tag_id} AS text))"
    if with_scores:  # "score" sorts after "name"; a missing score is null
        text = f"""({text} || ', "score": ' || coalesce(CAST(to_jsonb(r.tag_scores[{n}]) AS text), 'null') || '}}')"""
    return text


def _tags(with_scores: bool) -> str:
    """The result's tags in their order, as a JSON array's text (jsonb's separators)."""
    looked_up = ", ".join(_tag(with_scores, f"r.tag_ids[{n}]", str(n)) for n in range(1, _LOOKED_UP + 1))
    aggregated = (f"(SELECT string_agg({_tag(with_scores, 'u.id', 'u.n')}, ', ' ORDER BY u.n) "
                  "FROM unnest(r.tag_ids) WITH ORDINALITY AS u(id, n))")
    return f"""'[' || CASE WHEN cardinality(r.tag_ids) <= {_LOOKED_UP} THEN concat_ws(', ', {looked_up})
                      ELSE coalesce({aggregated}, '') END || ']'"""


def _line(with_scores: bool) -> str:
    # Pinned: "source": "manual"; computed from an older README than the repo's current one: "stale".
    return f"""'{{"id": ' || CAST(to_json(r.repo_id) AS text) || ', "tags": ' || {_tags(with_scores)}
        || CASE WHEN r.backend = 'manual' THEN ', "source": "manual"}}'
                WHEN r.readme_hash <> p.readme_hash THEN ', "stale": true}}'
                ELSE '}}' END"""


STALE_SUFFIX = ', "stale": true}'  # how a stale line ends (jsonb puts the key last; an id's quotes are escaped)


def _export_query(with_scores: bool) -> str:
    return (f"{_tag_texts(with_scores)} SELECT {_line(with_scores)} FROM results r JOIN repos p ON p.id = r.repo_id "
            "CROSS JOIN t ORDER BY r.repo_id")


def _changed_query(with_scores: bool) -> str:
    """Repos whose live result changed after %(since)s (written, re-tagged, pinned, unpinned, restored),
    and those whose result was removed after it (archived, then deleted: unpinned to nothing, rolled back
    to untagged), marked removed."""
    return f"""{_tag_texts(with_scores)}
        SELECT line FROM (
            SELECT r.repo_id AS id, {_line(with_scores)} AS line
            FROM results r JOIN repos p ON p.id = r.repo_id CROSS JOIN t
            WHERE r.changed_at > %(since)s
            UNION ALL
            SELECT DISTINCT h.repo_id, CAST(jsonb_build_object('id', h.repo_id, 'removed', true) AS text)
            FROM result_history h
            WHERE h.replaced_at > %(since)s AND NOT EXISTS (SELECT 1 FROM results r WHERE r.repo_id = h.repo_id)
        ) AS changed ORDER BY id
    """


# COPY's text format would escape a JSON line's backslashes; CSV with a quote and a delimiter that JSON
# text never holds raw (control characters are escaped) writes each line as it is.
_COPY = "COPY ({query}) TO STDOUT (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')"


def iter_export_blocks(conn: Connection, *, with_scores: bool = False,
                       changed_since: datetime | None = None) -> Iterator[bytes]:
    """The JSON lines (UTF-8, each ending in a newline), in id order, in blocks of whole lines, from one
    COPY in the caller's transaction (one snapshot: a consistent export)."""
    query = _export_query(with_scores) if changed_since is None else _changed_query(with_scores)
    params = None if changed_since is None else {"since": changed_since}
    conn.execute(sa.text("SET LOCAL client_encoding = 'UTF8'"))
    driver: Any = conn.connection.driver_connection  # psycopg's own: COPY is not SQLAlchemy's
    statement = _COPY.format(query=query)
    try:
        with driver.cursor() as cursor, cursor.copy(statement, params) as copy:
            block = bytearray()
            for row in copy:  # the server sends each row as a message of its own: these are whole lines
                block += row
                if len(block) >= BLOCK:
                    yield bytes(block)
                    block.clear()
            if block:
                yield bytes(block)
    except psycopg.Error as exc:  # as SQLAlchemy's, for the caller's transaction() to translate
        raise sa.exc.DBAPIError.instance(statement, params, exc, psycopg.Error) from exc


def database_now(conn: Connection) -> datetime:
    """The server's transaction time: what an export is "as of" (the next --changed-since)."""
    as_of: datetime = conn.execute(sa.text("SELECT now()")).scalar_one()
    return as_of
