"""Progress of runs, read for `tagger status`, `tagger runs --watch` and the metrics exporter.

A run's "tagged" counts every repo it wrote a result for, whether that result is still live or was
replaced since by a later run (then it is in result_history under this run's id): the count stays true
after later runs. Its first and last result times give the run's own rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Connection

from db.models import jobs, result_history, results, runs, shadow_results


@dataclass(frozen=True, slots=True)
class RunProgress:
    run_id: int
    kind: str
    started_at: datetime
    enqueued: int  # live: repos sent; canary: the sample
    tagged: int  # repos with a result written by this run (live or replaced since)
    pending: int  # still to do: queued or waiting for a retry (while this run is the last to send them)
    dead: int
    first_tagged_at: datetime | None
    last_tagged_at: datetime | None
    promoted_at: datetime | None
    rolled_back_at: datetime | None
    sent_at: datetime | None = None  # None: its producer is still sending (or was killed while it was)


def mark_run_sent(conn: Connection, run_id: int) -> None:
    """The run's producer sent its last batch (or stopped sending): the run is no longer "sending"."""
    conn.execute(sa.update(runs).where(runs.c.id == run_id, runs.c.sent_at.is_(None)).values(sent_at=sa.func.now()))


def runs_progress(conn: Connection, run_ids: Sequence[int]) -> list[RunProgress]:
    """Each of ``run_ids``' progress, in the order given (unknown ids left out); a few queries each,
    through the run_id indexes."""
    found = {r["id"]: r for r in conn.execute(sa.select(runs).where(runs.c.id.in_(list(run_ids)))).mappings()}
    return [_progress(conn, found[i]) for i in run_ids if i in found]


def recent_run_ids(conn: Connection, limit: int) -> list[int]:
    return list(conn.execute(sa.select(runs.c.id).order_by(runs.c.id.desc()).limit(limit)).scalars())


def _progress(conn: Connection, run: sa.RowMapping) -> RunProgress:
    run_id = int(run["id"])
    if run["kind"] == "canary":
        row = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.count().filter(shadow_results.c.state == "done"),
                sa.func.count().filter(shadow_results.c.state.in_(("queued", "failed"))),
                sa.func.count().filter(shadow_results.c.state == "dead"),
                sa.func.min(shadow_results.c.updated_at).filter(shadow_results.c.state == "done"),
                sa.func.max(shadow_results.c.updated_at).filter(shadow_results.c.state == "done"),
            ).where(shadow_results.c.run_id == run_id)
        ).one()
        sample, done, pending, dead, first, last = row
        return RunProgress(run_id, "canary", run["started_at"], int(sample), int(done), int(pending), int(dead),
                           first, last, run["promoted_at"], run["rolled_back_at"], run["sent_at"])
    written = sa.union(
        sa.select(results.c.repo_id, results.c.tagged_at).where(results.c.run_id == run_id),
        sa.select(result_history.c.repo_id, result_history.c.tagged_at).where(result_history.c.run_id == run_id),
    ).subquery()
    tagged, first, last = conn.execute(
        sa.select(sa.func.count(sa.distinct(written.c.repo_id)), sa.func.min(written.c.tagged_at),
                  sa.func.max(written.c.tagged_at))
    ).one()
    pending, dead = conn.execute(
        sa.select(sa.func.count().filter(jobs.c.state.in_(("queued", "failed"))),
                  sa.func.count().filter(jobs.c.state == "dead")).where(jobs.c.run_id == run_id)
    ).one()
    return RunProgress(run_id, "live", run["started_at"], int(run["enqueued"]), int(tagged), int(pending), int(dead),
                       first, last, run["promoted_at"], run["rolled_back_at"], run["sent_at"])


def canaries_pending(conn: Connection) -> dict[int, int]:
    """Canary runs with repos of their sample still to tag, and how many (promoted or rolled-back ones
    aside: nobody waits for them any more)."""
    rows = conn.execute(
        sa.select(shadow_results.c.run_id, sa.func.count())
        .join(runs, runs.c.id == shadow_results.c.run_id)
        .where(shadow_results.c.state.in_(("queued", "failed")), runs.c.rolled_back_at.is_(None),
               runs.c.promoted_at.is_(None))
        .group_by(shadow_results.c.run_id)
    ).all()
    return {int(run_id): int(n) for run_id, n in rows}
