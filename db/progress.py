"""Progress of runs, read for `tagger status`, `tagger runs --watch` and the metrics exporter.

A run's "tagged" counts every repo it wrote a result for, whether that result is still live or was
replaced since by a later run (then it is in result_history under this run's id): the count stays true
after later runs. Its first and last result times give the run's own rate.

A live run's counts are kept as the writes happen (migration 0007_run_counts, db.counts): "tagged" is
incremented when the run writes a repo's result and the live one was not already its own, and never
decremented (pruned history and deleted repos stay counted). One known overcount: a batch of the run
redelivered after another write replaced its result counts the repo a second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Connection

from db.counts import CANARY_COUNTERS, RUN_COUNTERS, run_counters
from db.models import JOB_STATES, runs


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
    """Each of ``run_ids``' progress, in the order given (unknown ids left out): its trigger-kept
    counters (db.counts) and its first and last result, index probes: a few rows per run, whatever the
    run's size or the index's."""
    found = {r["id"]: r for r in conn.execute(sa.select(runs).where(runs.c.id.in_(list(run_ids)))).mappings()}
    live = [i for i in run_ids if i in found and found[i]["kind"] == "live"]
    canaries = [i for i in run_ids if i in found and found[i]["kind"] == "canary"]
    # One read (and one fold of the deltas) for both kinds: each run gets both sets of names.
    counters = run_counters(conn, live + canaries, (*RUN_COUNTERS, *CANARY_COUNTERS)) if live or canaries else {}
    spans = {run_id: (first, last) for run_id, first, last in conn.execute(_SPANS, {"ids": live})} if live else {}
    if canaries:
        spans |= {run_id: (first, last) for run_id, first, last in conn.execute(_CANARY_SPANS, {"ids": canaries})}
    return [(_live if found[i]["kind"] == "live" else _canary)(found[i], counters[i], *spans[i])
            for i in run_ids if i in found]


def recent_run_ids(conn: Connection, limit: int) -> list[int]:
    return list(conn.execute(sa.select(runs.c.id).order_by(runs.c.id.desc()).limit(limit)).scalars())


# Each run's first and last result, live or replaced since: min and max through the (run_id, tagged_at)
# indexes, one probe each (the unnest's column is not named id: result_history has an id of its own).
_SPANS = sa.text("""
    SELECT w.run, least(r.first, h.first), greatest(r.last, h.last)
    FROM unnest(CAST(:ids AS int[])) AS w(run)
    CROSS JOIN LATERAL (SELECT min(tagged_at) AS first, max(tagged_at) AS last FROM results
                        WHERE run_id = w.run) AS r
    CROSS JOIN LATERAL (SELECT min(tagged_at) AS first, max(tagged_at) AS last FROM result_history
                        WHERE run_id = w.run) AS h
""")


def _live(run: sa.RowMapping, counters: dict[str, int], first: datetime | None,
          last: datetime | None) -> RunProgress:
    pending = counters["jobs:queued"] + counters["jobs:failed"]
    return RunProgress(int(run["id"]), "live", run["started_at"], int(run["enqueued"]), counters["tagged"], pending,
                       counters["jobs:dead"], first, last, run["promoted_at"], run["rolled_back_at"], run["sent_at"])


_CANARY_SPANS = sa.text("""
    SELECT w.run, d.first, d.last
    FROM unnest(CAST(:ids AS int[])) AS w(run)
    CROSS JOIN LATERAL (SELECT min(updated_at) AS first, max(updated_at) AS last FROM shadow_results
                        WHERE run_id = w.run AND state = 'done') AS d
""")


def _canary(run: sa.RowMapping, counters: dict[str, int], first: datetime | None,
            last: datetime | None) -> RunProgress:
    """A canary's sample: its repos by state (shadow results), its first and last result done."""
    by_state = {state: counters[f"shadow_results:{state}"] for state in JOB_STATES}
    return RunProgress(int(run["id"]), "canary", run["started_at"], sum(by_state.values()), by_state["done"],
                       by_state["queued"] + by_state["failed"], by_state["dead"], first, last, run["promoted_at"],
                       run["rolled_back_at"], run["sent_at"])


def canaries_pending(conn: Connection) -> dict[int, int]:
    """Canary runs with repos of their sample still to tag, and how many (promoted or rolled-back ones
    aside: nobody waits for them any more). Their counters: a few rows per open canary."""
    open_ids = list(conn.execute(
        sa.select(runs.c.id).where(runs.c.kind == "canary", runs.c.rolled_back_at.is_(None),
                                   runs.c.promoted_at.is_(None)).order_by(runs.c.id)).scalars())
    counters = run_counters(conn, open_ids, CANARY_COUNTERS) if open_ids else {}
    pending = {run_id: c["shadow_results:queued"] + c["shadow_results:failed"] for run_id, c in counters.items()}
    return {run_id: n for run_id, n in pending.items() if n}
