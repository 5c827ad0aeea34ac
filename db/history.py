"""Result versions: what history keeps of replaced results, a repo's versions, and a run's rollback."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from db.configuration import Configuration
from db.engine import bulk_write_settings
from db.models import MANUAL, RESULT_NAMES, VERSION_NAMES, pruned_runs, result_history, results
from db.runs import mark_run_rolled_back
from tagger.errors import InputError


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
_RESTORED = [name for name in VERSION_NAMES if name != "repo_id"]
# A locked result's columns, and beside them those of its version before (before_*).
_LOCKED_COLUMNS = ", ".join([f"r.{name}" for name in VERSION_NAMES]
                            + [f"h.{name} AS before_{name}" for name in _RESTORED])
_RESTORED_COLUMNS = ", ".join(f"{name} = l.before_{name}" for name in _RESTORED)
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
# One statement for the writes: the run's live results are locked in id order (a worker's batch locks in
# id order too: no deadlock), each beside the first version the run replaced (none: the run tagged it
# first), the two joined in id order (a merge join) while the locks are taken. Each locked row is
# archived, then restored to its version before or deleted. The restore and the delete each take their
# own rows of that one set by a filter: the delete, with none to take (the common case), reads no row of
# results (before, it found its rows by an anti-join over the restored rows, with a scan of the whole
# table), and the restore no longer joins history a second time. Each row is locked before it is
# written (the writes read the locked rows), and the archive reads the locked versions.
_ROLLBACK_WRITES = sa.text(f"""
    WITH locked AS (
        SELECT {_LOCKED_COLUMNS}, h.id AS before_id
        FROM results r LEFT JOIN (
            SELECT DISTINCT ON (repo_id) id, {_VERSION_COLUMNS} FROM result_history WHERE replaced_by_run = :run
            ORDER BY repo_id, id
        ) AS h ON h.repo_id = r.repo_id
        WHERE r.run_id = :run ORDER BY r.repo_id FOR UPDATE OF r
    ), restored AS (
        UPDATE results SET {_RESTORED_COLUMNS}, changed_at = now()
        FROM locked l WHERE results.repo_id = l.repo_id AND l.before_id IS NOT NULL
        RETURNING 1
    ), removed AS (
        DELETE FROM results USING locked l WHERE results.repo_id = l.repo_id AND l.before_id IS NULL
        RETURNING 1
    ), archived AS (
        INSERT INTO result_history ({_VERSION_COLUMNS}, replaced_by_run, replaced_reason)
        SELECT {_VERSION_COLUMNS}, NULL, 'rollback' FROM locked
    )
    SELECT (SELECT count(*) FROM restored), (SELECT count(*) FROM removed)
""")


def rollback_run(conn: Connection, run_id: int) -> RollbackReport:
    """For every repo run ``run_id`` wrote, restore the version before it, except repos changed since or
    pinned. Marks the run rolled back first (with the run's lock held: the run's writes in flight are in,
    and its later writes are dropped by the workers). In the caller's transaction: all or nothing.

    Set-based: two statements whatever the run's size (what is left alone, then the writes), and the
    client holds only counts and a bounded sample."""
    pruned = conn.execute(sa.select(pruned_runs.c.versions).where(pruned_runs.c.run_id == run_id)).scalar()
    if pruned is not None:
        raise InputError(f"run {run_id} can no longer be rolled back: `tagger history prune` deleted {pruned} "
                         "of the versions it replaced")
    mark_run_rolled_back(conn, run_id)
    params = {"run": run_id, "sample": SAMPLE}
    bulk_write_settings(conn)
    report = RollbackReport()
    for pinned, n, sample in conn.execute(_LEFT_ALONE, params):
        if pinned:
            report.pinned, report.pinned_sample = int(n), list(sample)
        else:
            report.changed_since, report.changed_since_sample = int(n), list(sample)
    restored, removed = conn.execute(_ROLLBACK_WRITES, params).one()
    report.restored, report.removed = int(restored), int(removed)
    return report


# History retention. A version is pruned when it is past every retention given: beyond the repo's
# ``keep`` newest versions, and replaced before ``before``. One pass over history (its (repo_id, id)
# index gives each repo's versions newest first), into a temporary table the report and the delete read.
_DOOMED = sa.text("""
    CREATE TEMP TABLE prune_doomed ON COMMIT DROP AS
    SELECT id, replaced_by_run FROM (
        SELECT id, replaced_by_run, replaced_at,
               row_number() OVER (PARTITION BY repo_id ORDER BY id DESC) AS newer
        FROM result_history
    ) AS h
    WHERE (CAST(:keep AS int) IS NULL OR newer > :keep)
      AND (CAST(:before AS timestamptz) IS NULL OR replaced_at < :before)
""")
# Runs not rolled back yet that lose a version they replaced: their rollback becomes impossible.
_LOST_ROLLBACKS = sa.text("""
    SELECT d.replaced_by_run, count(*) FROM prune_doomed d JOIN runs r ON r.id = d.replaced_by_run
    WHERE r.rolled_back_at IS NULL GROUP BY d.replaced_by_run ORDER BY d.replaced_by_run
""")
_PRUNE = sa.text("DELETE FROM result_history h USING prune_doomed d WHERE h.id = d.id")
_MARK_PRUNED = sa.text("""
    INSERT INTO pruned_runs (run_id, versions) SELECT run, n FROM unnest(CAST(:runs AS int[]), CAST(:ns AS bigint[]))
        AS l(run, n)
    ON CONFLICT (run_id) DO UPDATE SET versions = pruned_runs.versions + excluded.versions, pruned_at = now()
""")


@dataclass
class PruneReport:
    versions: int  # history rows deleted (or, dry run, that would be)
    lost_rollbacks: dict[int, int]  # run -> its replaced versions deleted: its rollback is no longer possible
    dry_run: bool


def prune_history(conn: Connection, *, keep: int | None, before: datetime | None, dry_run: bool) -> PruneReport:
    """Delete the history versions past the retention (set-based, in the caller's transaction), and say
    which runs' rollbacks that makes impossible (those runs are recorded: their rollback is refused)."""
    if keep is None and before is None:
        raise InputError("give --keep N, --before DATE, or both")
    conn.execute(_DOOMED, {"keep": keep, "before": before})
    lost = {int(run): int(n) for run, n in conn.execute(_LOST_ROLLBACKS)}
    if dry_run:
        versions = int(conn.execute(sa.text("SELECT count(*) FROM prune_doomed")).scalar_one())
        return PruneReport(versions, lost, dry_run=True)
    versions = conn.execute(_PRUNE).rowcount
    if lost:
        conn.execute(_MARK_PRUNED, {"runs": list(lost), "ns": list(lost.values())})
    return PruneReport(versions, lost, dry_run=False)
