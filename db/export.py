"""`tagger export`: each tagged repo's result as one JSON line, built by the server and streamed through
a server-side cursor (memory flat, whatever the index's size); and the incremental export, the repos
whose live tags changed since a time, through results.changed_at's index and history's replaced_at.

The JSON is jsonb's text: keys in jsonb's order (shortest first: "id", "tags", then "stale" or
"source"), as ``json.dumps(..., ensure_ascii=False)`` writes them; a score is the real's shortest text
(0.1993, as the engine rounded it and as `tagger review` shows the confidence), not its value widened
to a double (0.19930000603199005).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

FETCH = 10_000  # rows per round trip of the server-side cursor


# Each tag's JSON object ({"id", "name"}), keyed by its id, built once per export: a result's tags are
# then looked up, not joined against the taxonomy row by row.
_TAG_OBJECTS = "(SELECT jsonb_object_agg(CAST(id AS text), jsonb_build_object('id', id, 'name', name)) FROM tags)"


def _tags(with_scores: bool) -> str:
    """The result's tags in their order (an id the taxonomy no longer has is left out)."""
    tag = "(t.m -> CAST(u.id AS text))"
    if with_scores:
        tag = f"({tag} || jsonb_build_object('score', to_jsonb(r.tag_scores[u.n])))"
    return f"""coalesce((
        SELECT jsonb_agg({tag} ORDER BY u.n) FROM unnest(r.tag_ids) WITH ORDINALITY AS u(id, n)
        WHERE t.m ? CAST(u.id AS text)
    ), '[]'::jsonb)"""


def _line(with_scores: bool) -> str:
    # Pinned: "source": "manual"; computed from an older README than the repo's current one: "stale".
    return f"""CAST(jsonb_build_object('id', r.repo_id, 'tags', {_tags(with_scores)})
        || CASE WHEN r.backend = 'manual' THEN jsonb_build_object('source', 'manual')
                WHEN r.readme_hash <> p.readme_hash THEN jsonb_build_object('stale', true)
                ELSE '{{}}'::jsonb END AS text)"""


STALE_SUFFIX = ', "stale": true}'  # how a stale line ends (jsonb puts the key last; an id's quotes are escaped)


def _export_query(with_scores: bool) -> str:
    return (f"SELECT {_line(with_scores)} FROM results r JOIN repos p ON p.id = r.repo_id "
            f"CROSS JOIN {_TAG_OBJECTS} AS t(m) ORDER BY r.repo_id")


def _changed_query(with_scores: bool) -> str:
    """Repos whose live result changed after :since (written, re-tagged, pinned, unpinned, restored), and
    those whose result was removed after it (archived, then deleted: unpinned to nothing, rolled back to
    untagged), marked removed."""
    return f"""
        SELECT line FROM (
            SELECT r.repo_id AS id, {_line(with_scores)} AS line
            FROM results r JOIN repos p ON p.id = r.repo_id CROSS JOIN {_TAG_OBJECTS} AS t(m)
            WHERE r.changed_at > :since
            UNION ALL
            SELECT DISTINCT h.repo_id, CAST(jsonb_build_object('id', h.repo_id, 'removed', true) AS text)
            FROM result_history h
            WHERE h.replaced_at > :since AND NOT EXISTS (SELECT 1 FROM results r WHERE r.repo_id = h.repo_id)
        ) AS changed ORDER BY id
    """


def iter_export_lines(conn: Connection, *, with_scores: bool = False,
                      changed_since: datetime | None = None) -> Iterator[list[str]]:
    """Pages of JSON lines (no newline), in id order, from one server-side cursor in the caller's
    transaction (one snapshot: a consistent export)."""
    query = _export_query(with_scores) if changed_since is None else _changed_query(with_scores)
    params = {} if changed_since is None else {"since": changed_since}
    # yield_per: a server-side cursor fetched FETCH rows at a time (SQLAlchemy's, so errors translate).
    result = conn.execution_options(yield_per=FETCH).execute(sa.text(query), params)
    for page in result.scalars().partitions():
        yield list(page)


def database_now(conn: Connection) -> datetime:
    """The server's transaction time: what an export is "as of" (the next --changed-since)."""
    as_of: datetime = conn.execute(sa.text("SELECT now()")).scalar_one()
    return as_of
