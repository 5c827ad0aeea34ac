"""Dead letters: repos that failed permanently or too often."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from db.jobs import upsert_jobs
from db.models import dead_letters
from db.results import utcnow


@dataclass(frozen=True, slots=True)
class DeadLetter:
    repo_id: str
    error_class: str
    message: str
    attempts: int
    first_failed_at: datetime | None = None
    last_failed_at: datetime | None = None
    task_id: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> DeadLetter:
        return cls(**{name: row[name] for name in _FIELDS})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_FIELDS = DeadLetter.__slots__


def record_dead_letters(conn: Connection, letters: Sequence[DeadLetter], task_id: str | None) -> None:
    """Dead-letter repos; their job state becomes dead."""
    if not letters:
        return
    now = utcnow()
    rows: list[dict[str, Any]] = [
        {"repo_id": d.repo_id, "error_class": d.error_class, "message": d.message[:4000], "attempts": d.attempts,
         "task_id": task_id, "first_failed_at": now, "last_failed_at": now}
        for d in sorted(letters, key=lambda d: d.repo_id)
    ]
    stmt = insert(dead_letters)
    stmt = stmt.on_conflict_do_update(
        index_elements=[dead_letters.c.repo_id],
        set_={k: stmt.excluded[k] for k in ("error_class", "message", "attempts", "task_id", "last_failed_at")},
    )
    conn.execute(stmt, rows)
    upsert_jobs(
        conn,
        [{"repo_id": r["repo_id"], "state": "dead", "attempts": r["attempts"], "queued_at": now,
          "last_error": r["message"][:2000], "task_id": task_id} for r in rows],
    )


def delete_dead_letters(conn: Connection, ids: Sequence[str]) -> int:
    if not ids:
        return 0
    return conn.execute(sa.delete(dead_letters).where(dead_letters.c.repo_id.in_(list(ids)))).rowcount


def list_dead_letters(conn: Connection, limit: int | None = None) -> list[DeadLetter]:
    query = sa.select(dead_letters).order_by(dead_letters.c.last_failed_at.desc(), dead_letters.c.repo_id)
    if limit:
        query = query.limit(limit)
    return [DeadLetter.from_row(row) for row in conn.execute(query).mappings()]


def get_dead_letter(conn: Connection, repo_id: str) -> DeadLetter | None:
    row = conn.execute(sa.select(dead_letters).where(dead_letters.c.repo_id == repo_id)).mappings().first()
    return DeadLetter.from_row(row) if row else None


def dead_letter_ids(conn: Connection) -> list[str]:
    return list(conn.execute(sa.select(dead_letters.c.repo_id).order_by(dead_letters.c.repo_id)).scalars())


def count_dead_letters(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(dead_letters)).scalar_one())


def purge_dead_letters(conn: Connection, before: datetime) -> int:
    return conn.execute(sa.delete(dead_letters).where(dead_letters.c.last_failed_at < before)).rowcount
