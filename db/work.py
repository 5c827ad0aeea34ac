"""Work in flight, live or canary, through one set of operations with the target store a parameter:
a batch's attempts so far, its outcomes written, and the repos whose message got lost (the sweeper).

Live work lives in jobs, results and dead letters; a canary's in its run's shadow results only, so no
reader of live results, job states or dead letters ever sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from db.canary import write_shadow_results
from db.dead_letters import DeadLetter, delete_dead_letters, record_dead_letters
from db.jobs import mark_done, schedule_retries
from db.models import ResultRow, jobs, shadow_results
from db.results import upsert_results, utcnow


@dataclass(frozen=True, slots=True)
class Store:
    """Where work is kept: live (``canary_run`` None) or a canary run's shadow results."""

    canary_run: int | None = None

    @property
    def is_canary(self) -> bool:
        return self.canary_run is not None

    def _table(self) -> tuple[sa.Table, sa.Column[Any], list[sa.ColumnElement[bool]]]:
        """The store's work table, the column a repo's due time is kept in, and its own rows."""
        if self.canary_run is None:
            return jobs, jobs.c.queued_at, []
        return shadow_results, shadow_results.c.updated_at, [shadow_results.c.run_id == self.canary_run]


LIVE = Store()


def canary_store(run_id: int) -> Store:
    return Store(canary_run=run_id)


@dataclass(frozen=True, slots=True)
class ScheduledRetry:
    repo_id: str
    attempts: int
    delay_s: float
    reason: str


@dataclass
class Outcomes:
    """What a batch came to: results (rows of db.models.RESULT_FIELDS with ``repo_id``), retries, dead
    letters, and the tagged repos that were dead letters until now (live: released)."""

    results: list[ResultRow] = field(default_factory=list)
    retries: list[ScheduledRetry] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    revived: list[str] = field(default_factory=list)


def attempts(conn: Connection, store: Store, ids: Sequence[str]) -> dict[str, int]:
    """Failed attempts so far per repo: the retry policy's input, kept in Postgres to survive redelivery."""
    table, _due, own = store._table()
    rows = conn.execute(sa.select(table.c.repo_id, table.c.attempts).where(*own, table.c.repo_id.in_(list(ids))))
    return {repo_id: n for repo_id, n in rows}


def record_outcomes(conn: Connection, store: Store, outcomes: Outcomes, *, task_id: str | None,
                    run_id: int | None, keep_results: bool = True) -> None:
    """Every outcome of a batch, in the caller's transaction. ``keep_results`` False (the run was rolled
    back meanwhile): the repos are done, their results dropped."""
    if store.canary_run is not None:
        rows = [row | {"state": "done", "error": None} for row in outcomes.results]
        rows += [{"repo_id": r.repo_id, "state": "failed", "attempts": r.attempts, "error": r.reason[:2000]}
                 for r in outcomes.retries]
        rows += [{"repo_id": d.repo_id, "state": "dead", "attempts": d.attempts,
                  "error": f"{d.error_class}: {d.message}"[:2000]} for d in outcomes.dead]
        write_shadow_results(conn, store.canary_run, rows)
        return
    upsert_results(conn, [row | {"run_id": run_id} for row in outcomes.results] if keep_results else [])
    mark_done(conn, sorted(row["repo_id"] for row in outcomes.results), task_id)
    delete_dead_letters(conn, outcomes.revived)
    schedule_retries(conn, [(r.repo_id, r.attempts, r.delay_s, r.reason) for r in outcomes.retries], task_id)
    record_dead_letters(conn, outcomes.dead, task_id)


def claim_stuck(conn: Connection, store: Store, due_before: datetime, limit: int) -> dict[int | None, list[str]]:
    """Up to ``limit`` repos of ``store`` queued (or due for a retry) since before ``due_before``: re-stamped
    (due now) and returned for re-sending (their message was lost), by the run each goes again under (its
    result is still that run's). SKIP LOCKED lets two sweepers run without sweeping the same repo.

    A sweep claims page after page with the same ``due_before``, fixed when it starts: a bound computed
    again for each page would pass the repos the sweep itself re-stamped (with --older-than 0, at once),
    and claim them again for ever."""
    table, due, own = store._table()
    rows = conn.execute(
        sa.select(table.c.repo_id, table.c.run_id)
        .where(*own, table.c.state.in_(("queued", "failed")), due < due_before)
        .order_by(table.c.repo_id).limit(limit).with_for_update(skip_locked=True)
    ).all()
    by_run: dict[int | None, list[str]] = {}
    for repo_id, run_id in rows:
        by_run.setdefault(run_id, []).append(repo_id)
    if rows:
        conn.execute(sa.update(table).where(*own, table.c.repo_id.in_([r for r, _ in rows]))
                     .values({"state": "queued", due.name: utcnow(), "updated_at": sa.func.now()}))
    return by_run
