"""The index of repos: their READMEs, and the pages of ids an enqueue sends."""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from db.configuration import Configuration
from db.counts import table_counts
from db.models import MANUAL, dead_letters, jobs, repos, results
from tagger.readme import readme_hash

Selection = Literal["all", "untagged", "stale"]


def _cut_size(row: Mapping[str, Any]) -> int | None:
    """The original size of a README stored cut (``readme_size`` larger than what is stored), else None."""
    size = row.get("readme_size")
    return int(size) if size is not None and size > len(row["readme"].encode("utf-8")) else None


def upsert_repos(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert or update repos (``id``, ``name``, ``readme``, and ``readme_size`` when the README was stored
    cut); a changed README bumps its version."""
    if not rows:
        return 0
    by_id = {row["id"]: row for row in rows}  # the last line for an id wins
    values = [
        {"id": i, "name": r.get("name") or "", "readme": r["readme"], "readme_hash": readme_hash(r["readme"]),
         "readme_size": _cut_size(r)}
        for i, r in sorted(by_id.items())
    ]
    stmt = insert(repos)
    changed = repos.c.readme_hash != stmt.excluded.readme_hash
    stmt = stmt.on_conflict_do_update(
        index_elements=[repos.c.id],
        set_={
            "name": stmt.excluded.name,
            "readme": stmt.excluded.readme,
            "readme_hash": stmt.excluded.readme_hash,
            "readme_size": stmt.excluded.readme_size,
            "readme_version": repos.c.readme_version + sa.case((changed, 1), else_=0),
            "updated_at": sa.func.now(),
        },
        where=changed | (repos.c.name != stmt.excluded.name)
        | repos.c.readme_size.is_distinct_from(stmt.excluded.readme_size),
    )
    conn.execute(stmt, values)
    return len(values)


# `tagger import`, streamed: each chunk's (line, id) pairs are COPYed into a temporary table first; the
# ids seen so far live in another on the server (its primary key answers "which line had this id
# first"), so the client's memory stays flat whatever the file's size. A chunk of ids new to the file
# and to the index (a first import: the common case) is then COPYed straight into repos; any other goes
# through a staging table and an upsert.
_IMPORT_TABLES = (
    "CREATE TEMP TABLE IF NOT EXISTS import_seen (id text PRIMARY KEY, line bigint NOT NULL)",
    "CREATE TEMP TABLE IF NOT EXISTS import_ids (line bigint NOT NULL, id text NOT NULL) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS import_chunk (line bigint NOT NULL, id text NOT NULL, name text NOT NULL, "
    "readme text NOT NULL, readme_size int) ON COMMIT DELETE ROWS",
)
# Binary COPY: no escaping to do on either side (the text format's backslash escapes cost the client a
# pass over every README and the server another; measured: a third of the server's COPY time).
_COPY_IDS = "COPY import_ids (line, id) FROM STDIN (FORMAT BINARY)"
REPOS_COPY_COLUMNS = "(id, name, readme, readme_hash, readme_size)"
_COPY_REPOS = f"COPY repos {REPOS_COPY_COLUMNS} FROM STDIN (FORMAT BINARY)"
_IMPORT_KNOWN = sa.text("SELECT EXISTS (SELECT 1 FROM import_ids i JOIN repos p ON p.id = i.id)")
_COPY_CHUNK = "COPY import_chunk (line, id, name, readme, readme_size) FROM STDIN (FORMAT BINARY)"
# Lines whose id an earlier line had (in this chunk or an earlier one): (line, id, first line); run after
# _IMPORT_SEEN, which keeps each id's earliest line.
_IMPORT_DUPLICATES = sa.text("""
    SELECT c.line, c.id, least(s.line, f.first) AS first
    FROM import_ids c
    JOIN (SELECT id, min(line) AS first FROM import_ids GROUP BY id) AS f ON f.id = c.id
    LEFT JOIN import_seen s ON s.id = c.id
    WHERE c.line <> least(s.line, f.first)
    ORDER BY c.line
    LIMIT :limit
""")
_IMPORT_SEEN = sa.text("""
    INSERT INTO import_seen (id, line) SELECT id, min(line) FROM import_ids GROUP BY id ORDER BY id
    ON CONFLICT (id) DO NOTHING
""")
# The last line for an id wins (DISTINCT ON, only when the chunk repeats an id: sorting wide rows is
# most of the statement); the hash is computed by the server (sha256 of the UTF-8 text, as
# tagger.readme.readme_hash); a changed README bumps its version.
_IMPORT_UPSERT = {
    distinct: sa.text(f"""
        INSERT INTO repos (id, name, readme, readme_hash, readme_size)
        SELECT {"DISTINCT ON (id)" if distinct else ""} id, name, readme,
            encode(sha256(convert_to(readme, 'UTF8')), 'hex'), readme_size
        FROM import_chunk {"ORDER BY id, line DESC" if distinct else ""}
        ON CONFLICT (id) DO UPDATE SET
            name = excluded.name, readme = excluded.readme, readme_hash = excluded.readme_hash,
            readme_size = excluded.readme_size, readme_version = repos.readme_version
                + CASE WHEN repos.readme_hash <> excluded.readme_hash THEN 1 ELSE 0 END,
            updated_at = now()
        WHERE repos.readme_hash <> excluded.readme_hash OR repos.name <> excluded.name
            OR repos.readme_size IS DISTINCT FROM excluded.readme_size
    """)
    for distinct in (True, False)
}
_IMPORT_DISTINCT_IDS = sa.text("SELECT count(DISTINCT id) FROM import_ids")


class ImportRow(NamedTuple):
    """One line of an import, as stored."""

    line: int
    id: str
    name: str
    readme: bytes  # UTF-8, no NUL, cut to the limit already
    readme_size: int | None  # the original size of a README stored cut, else None


_pack = struct.pack
BINARY_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + _pack(">ii", 0, 0)  # binary COPY's header: no flags, no extension
BINARY_COPY_TRAILER = _pack(">h", -1)
_NULL = _pack(">i", -1)
_HASH_LENGTH = _pack(">i", 64)  # a sha256 in hex


def _size_field(size: int | None) -> bytes:
    return _NULL if size is None else _pack(">iq", 8, size)


def _ids_block(rows: Sequence[ImportRow]) -> bytes:
    """(line, id) of each row, in binary COPY format."""
    parts = [BINARY_COPY_HEADER]
    for row in rows:
        repo_id = row.id.encode()
        parts += (_pack(">hiqi", 2, 8, row.line, len(repo_id)), repo_id)
    parts.append(BINARY_COPY_TRAILER)
    return b"".join(parts)


def _tuples(rows: Sequence[ImportRow], *, hashed: bool) -> list[bytes]:
    """The rows as binary COPY tuples, without a stream's header and trailer: (id, name, readme,
    readme_hash, readme_size) when ``hashed`` (REPOS_COPY_COLUMNS), else (line, id, name, readme,
    readme_size). The hash is tagger.readme.readme_hash of the text (sha256 of its UTF-8), taken here of
    the bytes already encoded (hashlib lets other threads run meanwhile)."""
    parts: list[bytes] = []
    for row in rows:
        repo_id, name, readme = row.id.encode(), row.name.encode(), row.readme
        if hashed:
            parts += (_pack(">hi", 5, len(repo_id)), repo_id, _pack(">i", len(name)), name,
                      _pack(">i", len(readme)), readme, _HASH_LENGTH, hashlib.sha256(readme).hexdigest().encode(),
                      _size_field(row.readme_size))
        else:
            parts += (_pack(">hiqi", 5, 8, row.line, len(repo_id)), repo_id, _pack(">i", len(name)), name,
                      _pack(">i", len(readme)), readme, _size_field(row.readme_size))
    return parts


def _rows_block(rows: Sequence[ImportRow], *, hashed: bool) -> bytes:
    """The rows as one binary COPY stream (_tuples)."""
    return b"".join([BINARY_COPY_HEADER, *_tuples(rows, hashed=hashed), BINARY_COPY_TRAILER])


def repos_copy_tuples(rows: Sequence[ImportRow]) -> bytes:
    """The rows as `tagger import` COPYs them into repos (REPOS_COPY_COLUMNS), without a stream's header
    and trailer: for a stream of several chunks (the index bench's floor for an import)."""
    return b"".join(_tuples(rows, hashed=True))


@dataclass(frozen=True, slots=True)
class ImportedChunk:
    new_ids: int  # ids no earlier line of the file had
    duplicates: int  # lines whose id an earlier line had
    duplicate_sample: list[tuple[int, str, int]]  # (line, id, first line), at most the limit asked


class RepoImport:
    """One import's session: chunks of rows in, each committed on its own."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        with conn.begin():
            # Staged READMEs are compressed with lz4, not pglz: most of a COPY's server time otherwise
            # (and the compressed value moves into repos, lz4 too, as is). Without lz4: pglz.
            with contextlib.suppress(sa.exc.DBAPIError), conn.begin_nested():
                conn.execute(sa.text("SET default_toast_compression = 'lz4'"))
            for statement in _IMPORT_TABLES:
                conn.execute(sa.text(statement))
            conn.execute(sa.text("TRUNCATE import_seen"))

    def write(self, rows: Sequence[ImportRow], sample: int) -> ImportedChunk:
        if not rows:
            return ImportedChunk(0, 0, [])
        with self.conn.begin():
            # A chunk lost to a server crash is imported again by running the same import again (an
            # upsert): not worth a WAL flush to wait for at every chunk's commit.
            self.conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
            driver: Any = self.conn.connection.driver_connection  # psycopg's own: COPY is not SQLAlchemy's
            with driver.cursor() as cursor:
                with cursor.copy(_COPY_IDS) as copy:
                    copy.write(_ids_block(rows))
                # Each line brings a new id or repeats one: the repeats are the chunk's size less the new
                # ids. (The first line of an id stays in import_seen, so the sample's query may run after.)
                new_ids = self.conn.execute(_IMPORT_SEEN).rowcount
                duplicates = len(rows) - new_ids
                found = [(int(line), repo_id, int(first)) for line, repo_id, first in
                         self.conn.execute(_IMPORT_DUPLICATES, {"limit": sample})] if duplicates and sample else []
                if not duplicates and not self.conn.execute(_IMPORT_KNOWN).scalar_one():
                    with cursor.copy(_COPY_REPOS) as copy:
                        copy.write(_rows_block(rows, hashed=True))
                else:
                    with cursor.copy(_COPY_CHUNK) as copy:
                        copy.write(_rows_block(rows, hashed=False))
                    repeats_within = int(self.conn.execute(_IMPORT_DISTINCT_IDS).scalar_one()) < len(rows)
                    self.conn.execute(_IMPORT_UPSERT[repeats_within])
        return ImportedChunk(new_ids, duplicates, found)


@dataclass(frozen=True, slots=True)
class ReadmeRow:
    id: str
    readme: str
    readme_hash: str
    readme_version: int
    dead_lettered: bool
    name: str = ""  # "owner/name": the scoring's name signal


def fetch_readmes(conn: Connection, ids: Sequence[str]) -> dict[str, ReadmeRow]:
    """The READMEs of a batch in one query; ids not in the index are simply absent."""
    query = (
        sa.select(
            repos.c.id,
            repos.c.readme,
            repos.c.readme_hash,
            repos.c.readme_version,
            dead_letters.c.repo_id.is_not(None).label("dead_lettered"),
            repos.c.name,
        )
        .outerjoin(dead_letters, dead_letters.c.repo_id == repos.c.id)
        .where(repos.c.id.in_(list(ids)))
    )
    return {row.id: ReadmeRow(*row) for row in conn.execute(query)}


def existing_repo_ids(conn: Connection, ids: Sequence[str]) -> set[str]:
    return set(conn.execute(sa.select(repos.c.id).where(repos.c.id.in_(list(ids)))).scalars())


def repo_exists(conn: Connection, repo_id: str) -> bool:
    return conn.execute(sa.select(repos.c.id).where(repos.c.id == repo_id)).first() is not None


def count_repos(conn: Connection) -> int:
    return table_counts(conn).get("repos", 0)


def page_repo_ids(
    conn: Connection,
    selection: Selection,
    *,
    after: str | None,
    limit: int,
    current: Configuration | None = None,
) -> list[str]:
    """One keyset page of repo ids in ``selection``: memory stays flat for any index size.

    ``current`` defines what "stale" means: never tagged, README changed since its result, or tagged
    under another configuration.
    """
    query = sa.select(repos.c.id).order_by(repos.c.id).limit(limit)
    if after is not None:
        query = query.where(repos.c.id > after)
    if selection in ("untagged", "stale"):
        query = query.outerjoin(results, results.c.repo_id == repos.c.id)
        needs_work: sa.ColumnElement[bool] = results.c.repo_id.is_(None)
        if selection == "stale":
            if current is None:
                raise ValueError("stale selection needs the current configuration")
            needs_work = sa.or_(
                needs_work,
                results.c.readme_hash != repos.c.readme_hash,
                *(results.c[name] != value for name, value in current.as_dict().items()),
            )
            # Not what is in flight (queued, or failed awaiting its retry: the sweeper re-sends those
            # whose message got lost) nor dead letters (`tagger dlq requeue`), unless the README
            # changed since: a scheduled refresh never re-sends what is already on its way.
            query = query.outerjoin(jobs, jobs.c.repo_id == repos.c.id)
            settled = sa.or_(
                jobs.c.repo_id.is_(None),
                jobs.c.state == "done",
                sa.and_(jobs.c.state == "dead", repos.c.updated_at > jobs.c.updated_at),
            )
            # Pinned repos (tags set by hand) are never stale: no refresh may replace them.
            needs_work = sa.and_(needs_work, settled, results.c.backend.is_distinct_from(MANUAL))
        query = query.where(needs_work)
    return list(conn.execute(query).scalars())


# A repo's place in a seed's draw: the SHA-256 of "<seed>:<id>" (defined by the text alone, so the same
# on any server and any platform). The server reads every id once and keeps the ``n`` first in a bounded
# top-N sort: no id crosses to the client but those drawn.
_DRAW = sa.text("""
    SELECT id FROM (
        SELECT id FROM repos ORDER BY sha256(convert_to(CAST(:seed AS text) || ':' || id, 'UTF8')), id LIMIT :n
    ) AS drawn ORDER BY id COLLATE "C"
""")


def draw_sample(conn: Connection, n: int, seed: int) -> list[str]:
    """``n`` repo ids drawn at random, reproducibly: the same seed over the same index gives the same
    sample, and a grown index keeps the repos it had that still place among the first ``n``; in id order."""
    return list(conn.execute(_DRAW, {"n": n, "seed": seed}).scalars())
