"""The index of repos: their READMEs, and the pages of ids an enqueue sends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
