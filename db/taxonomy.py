"""The taxonomy in the database: its tags and its versions."""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from db.models import results, tags, taxonomy_versions
from tagger.taxonomy import Taxonomy


def replace_taxonomy(conn: Connection, taxonomy: Taxonomy, source: str) -> int:
    """Make ``taxonomy`` the current one; a new content gets a new (higher) taxonomy version."""
    content_hash = taxonomy.version_hash
    version = conn.execute(
        sa.select(taxonomy_versions.c.version).where(taxonomy_versions.c.content_hash == content_hash)
    ).scalar()
    latest = current_taxonomy_version(conn)
    if version is None or version != latest:
        conn.execute(sa.delete(taxonomy_versions).where(taxonomy_versions.c.content_hash == content_hash))
        version = conn.execute(
            sa.insert(taxonomy_versions)
            .values(content_hash=content_hash, source=source)
            .returning(taxonomy_versions.c.version)
        ).scalar_one()
    # All rows go and the new ones come in: a kept id may carry another name, and a kept name another id.
    conn.execute(sa.delete(tags))
    conn.execute(
        sa.insert(tags), [{"id": t.id, "name": t.name, "description": t.description} for t in taxonomy.tags]
    )
    return int(version)


def current_taxonomy_version(conn: Connection) -> int | None:
    return conn.execute(sa.select(sa.func.max(taxonomy_versions.c.version))).scalar()


def count_repos_tagged_with(conn: Connection, tag_ids: Collection[int]) -> int:
    """Repos whose result holds any of ``tag_ids``."""
    if not tag_ids:
        return 0
    query = sa.select(sa.func.count()).select_from(results).where(results.c.tag_ids.overlap(sorted(tag_ids)))
    return int(conn.execute(query).scalar_one())


def load_taxonomy(conn: Connection) -> Taxonomy:
    rows = conn.execute(sa.select(tags.c.id, tags.c.name, tags.c.description)).mappings()
    return Taxonomy.from_entries(dict(row) for row in rows)

