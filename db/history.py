"""Result versions: what history keeps of replaced results, a repo's versions, and a run's rollback."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from db.configuration import Configuration
from db.models import MANUAL, RESULT_NAMES, VERSION_NAMES, manual_tags, result_history, results
from db.results import any_of, archive_results, delete_results, restore_versions
from db.runs import mark_run_rolled_back


@dataclass(frozen=True, slots=True)
class ResultVersion:
    """A result as it is (``replaced_reason`` None: the live one) or was."""

    repo_id: str
    fields: Mapping[str, Any]  # the result's fields (db.models.RESULT_FIELDS)
    tagged_at: datetime
    run_id: int | None
    replaced_at: datetime | None = None
    replaced_by_run: int | None = None
    replaced_reason: str | None = None  # a run's write ("run"), "manual", "unpin", "rollback"

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ResultVersion:
        return cls(row["repo_id"], {name: row[name] for name in RESULT_NAMES}, row["tagged_at"], row["run_id"],
                   row.get("replaced_at"), row.get("replaced_by_run"), row.get("replaced_reason"))

    @property
    def tag_ids(self) -> list[int]:
        return list(self.fields["tag_ids"])

    @property
    def configuration(self) -> Configuration:
        return Configuration.from_row(self.fields)

    @property
    def pinned(self) -> bool:
        return self.fields["backend"] == MANUAL

    def as_dict(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, **self.fields, "tagged_at": self.tagged_at, "run_id": self.run_id,
                "replaced_at": self.replaced_at, "replaced_by_run": self.replaced_by_run,
                "replaced_reason": self.replaced_reason}


def result_versions(conn: Connection, repo_id: str) -> list[ResultVersion]:
    """A repo's versions, newest first: the live one, then history."""
    current = conn.execute(sa.select(*(results.c[name] for name in VERSION_NAMES))
                           .where(results.c.repo_id == repo_id)).mappings().first()
    older = conn.execute(
        sa.select(result_history).where(result_history.c.repo_id == repo_id).order_by(result_history.c.id.desc())
    ).mappings().all()
    return [ResultVersion.from_row(row) for row in ([current] if current else []) + list(older)]


def newest_machine_version(conn: Connection, repo_id: str) -> int | None:
    """The history id of the repo's newest version not pinned by hand."""
    return conn.execute(
        sa.select(result_history.c.id).where(result_history.c.repo_id == repo_id, result_history.c.backend != MANUAL)
        .order_by(result_history.c.id.desc()).limit(1)
    ).scalar()


@dataclass
class RollbackReport:
    restored: list[str] = field(default_factory=list)  # the version before the run is live again
    removed: list[str] = field(default_factory=list)  # the run tagged them first: untagged again
    changed_since: list[str] = field(default_factory=list)  # replaced after the run: not touched
    pinned: list[str] = field(default_factory=list)  # tags pinned by hand since: not touched


def rollback_run(conn: Connection, run_id: int) -> RollbackReport:
    """For every repo run ``run_id`` wrote, restore the version before it, except repos changed since or
    pinned. Marks the run rolled back first (with the run row locked: the run's writes in flight are in,
    and its later writes are dropped by the workers). In the caller's transaction: all or nothing."""
    mark_run_rolled_back(conn, run_id)
    mine = list(conn.execute(
        sa.select(results.c.repo_id).where(results.c.run_id == run_id).order_by(results.c.repo_id).with_for_update()
    ).scalars())
    # Per repo, the first version the run replaced: what was live before it.
    before: dict[str, int] = dict(conn.execute(
        sa.select(result_history.c.repo_id, sa.func.min(result_history.c.id))
        .where(result_history.c.replaced_by_run == run_id, result_history.c.repo_id == any_of(mine))
        .group_by(result_history.c.repo_id)
    ).all())
    archive_results(conn, mine, "rollback")
    restore_versions(conn, sorted(before.values()))
    report = RollbackReport()
    for repo_id in mine:
        (report.restored if repo_id in before else report.removed).append(repo_id)
    delete_results(conn, report.removed)
    gone = conn.execute(
        sa.select(result_history.c.repo_id, manual_tags.c.repo_id.is_not(None))
        .outerjoin(manual_tags, manual_tags.c.repo_id == result_history.c.repo_id)
        .where(result_history.c.run_id == run_id, result_history.c.replaced_reason != "rollback")
        .distinct().order_by(result_history.c.repo_id)
    ).all()
    touched = set(mine)
    for repo_id, pinned in gone:
        if repo_id not in touched:
            (report.pinned if pinned else report.changed_since).append(repo_id)
    return report
