"""Result versions: what history keeps of replaced results, a repo's versions, and a run's rollback."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from db.configuration import Configuration
from db.models import MANUAL, RESULT_NAMES, VERSION_NAMES, result_history, results
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


SAMPLE = 20  # ids a report names per kind: the counts are exact, the sample bounded whatever the run's size


@dataclass
class RollbackReport:
    """What a rollback did, as counts, with a bounded sample of the ids left alone."""

    restored: int = 0  # the version before the run is live again
    removed: int = 0  # the run tagged them first: untagged again
    changed_since: int = 0  # replaced after the run: not touched
    pinned: int = 0  # tags pinned by hand since: not touched
    changed_since_sample: list[str] = field(default_factory=list)
    pinned_sample: list[str] = field(default_factory=list)


_VERSION_COLUMNS = ", ".join(VERSION_NAMES)
_RESTORED_COLUMNS = ", ".join(f"{name} = h.{name}" for name in VERSION_NAMES if name != "repo_id")
# The repos the run replaced a version of and no longer holds (replaced again since, or pinned): left
# alone. Read before anything moves; counted exactly, named by a bounded sample.
_LEFT_ALONE = sa.text("""
    WITH gone AS (
        SELECT DISTINCT h.repo_id, m.repo_id IS NOT NULL AS pinned
        FROM result_history h LEFT JOIN manual_tags m ON m.repo_id = h.repo_id
        WHERE h.run_id = :run AND h.replaced_reason <> 'rollback'
          AND NOT EXISTS (SELECT 1 FROM results r WHERE r.repo_id = h.repo_id AND r.run_id = :run)
    )
    SELECT pinned, count(*), (array_agg(repo_id ORDER BY repo_id))[1:CAST(:sample AS int)]
    FROM gone GROUP BY pinned
""")
# The run's live results, locked in id order (one row back, whatever their number).
_LOCK_RUN_RESULTS = sa.text("""
    SELECT count(*) FROM (SELECT 1 FROM results WHERE run_id = :run ORDER BY repo_id FOR UPDATE) AS locked
""")
_ARCHIVE_RUN_RESULTS = sa.text(f"""
    INSERT INTO result_history ({_VERSION_COLUMNS}, replaced_by_run, replaced_reason)
    SELECT {_VERSION_COLUMNS}, NULL, 'rollback' FROM results WHERE run_id = :run ORDER BY repo_id
""")
# The run tagged them first (it replaced no version of theirs): untagged again.
_DELETE_FIRST_TAGGED = sa.text("""
    DELETE FROM results r WHERE r.run_id = :run
      AND NOT EXISTS (SELECT 1 FROM result_history h WHERE h.replaced_by_run = :run AND h.repo_id = r.repo_id)
""")
# Per repo, the first version the run replaced: what was live before it.
_RESTORE_BEFORE = sa.text(f"""
    UPDATE results SET {_RESTORED_COLUMNS}, changed_at = now()
    FROM result_history h
    JOIN (SELECT min(id) AS id FROM result_history WHERE replaced_by_run = :run GROUP BY repo_id) AS first
      ON first.id = h.id
    WHERE results.repo_id = h.repo_id AND results.run_id = :run
""")


def rollback_run(conn: Connection, run_id: int) -> RollbackReport:
    """For every repo run ``run_id`` wrote, restore the version before it, except repos changed since or
    pinned. Marks the run rolled back first (with the run row locked: the run's writes in flight are in,
    and its later writes are dropped by the workers). In the caller's transaction: all or nothing.

    Set-based: a handful of statements whatever the run's size (archive, delete, restore, each one
    INSERT/DELETE/UPDATE over the run's rows), and the client holds only counts and a bounded sample."""
    mark_run_rolled_back(conn, run_id)
    params = {"run": run_id, "sample": SAMPLE}
    report = RollbackReport()
    for pinned, n, sample in conn.execute(_LEFT_ALONE, params):
        if pinned:
            report.pinned, report.pinned_sample = int(n), list(sample)
        else:
            report.changed_since, report.changed_since_sample = int(n), list(sample)
    conn.execute(_LOCK_RUN_RESULTS, params)
    conn.execute(_ARCHIVE_RUN_RESULTS, params)
    report.removed = conn.execute(_DELETE_FIRST_TAGGED, params).rowcount
    report.restored = conn.execute(_RESTORE_BEFORE, params).rowcount
    return report
