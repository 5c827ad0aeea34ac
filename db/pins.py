"""Tags pinned by hand: the live result becomes them, and no run, refresh, sweep or promote replaces them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from db.history import newest_machine_version
from db.models import MANUAL, manual_tags, repos
from db.results import archive_results, delete_results, lock_results, restore_versions, write_result


@dataclass(frozen=True, slots=True)
class Pin:
    repo_id: str
    tag_ids: list[int]
    set_by: str
    set_at: datetime
    note: str

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Pin:
        return cls(row["repo_id"], list(row["tag_ids"]), row["set_by"], row["set_at"], row["note"])


def get_pin(conn: Connection, repo_id: str) -> Pin | None:
    row = conn.execute(sa.select(manual_tags).where(manual_tags.c.repo_id == repo_id)).mappings().first()
    return Pin.from_row(row) if row else None


def pin_tags(conn: Connection, repo_id: str, tag_ids: Sequence[int], *, set_by: str, note: str,
             taxonomy_version: int) -> None:
    """Pin ``tag_ids`` on a repo: the live result becomes them (backend 'manual', which the write step
    never replaces), the replaced result goes to history, who/when/note are kept."""
    repo = conn.execute(sa.select(repos.c.readme_hash, repos.c.readme_version).where(repos.c.id == repo_id)).one()
    if lock_results(conn, [repo_id]):
        archive_results(conn, [repo_id], MANUAL)
    # A pin as a result: who set it as the model, their note as the raw output.
    write_result(conn, {"repo_id": repo_id, "tag_ids": list(tag_ids), "backend": MANUAL, "model": set_by,
                        "prompt_version": MANUAL, "taxonomy_version": taxonomy_version,
                        "readme_hash": repo.readme_hash, "readme_version": repo.readme_version, "raw_output": note,
                        "latency_ms": 0.0, "tag_scores": None, "confidence": None})
    pin = insert(manual_tags).values(repo_id=repo_id, tag_ids=list(tag_ids), set_by=set_by, note=note)
    conn.execute(pin.on_conflict_do_update(
        index_elements=[manual_tags.c.repo_id],
        set_={"tag_ids": list(tag_ids), "set_by": set_by, "note": note, "set_at": sa.func.now()}))


def unpin_tags(conn: Connection, repo_id: str) -> Pin | None:
    """Release a pin: the newest machine result before it comes back (or none: the repo is untagged
    again, and the next refresh tags it). The released pin, or None when there was none."""
    row = conn.execute(sa.delete(manual_tags).where(manual_tags.c.repo_id == repo_id)
                       .returning(*manual_tags.c)).mappings().first()
    if row is None:
        return None
    if lock_results(conn, [repo_id]).get(repo_id) == MANUAL:
        archive_results(conn, [repo_id], "unpin")
        previous = newest_machine_version(conn, repo_id)
        if previous is None:
            delete_results(conn, [repo_id])
        else:
            restore_versions(conn, [previous])
    return Pin.from_row(row)
