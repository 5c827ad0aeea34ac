"""Live job state: each repo's place between enqueue and result (Postgres is the source of truth, the
queue only a transport), and what `tagger status` counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from db.counts import table_counts
from db.models import JOB_STATES, dead_letters, jobs, repos, results
from db.repos import existing_repo_ids
from db.results import utcnow


def upsert_jobs(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write job states: each row has repo_id, state, attempts, queued_at, last_error, task_id.

    Ids not in the index are skipped (their job is the dead letter alone).
    """
    if not rows:
        return
    stmt = insert(jobs)
    excluded = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=[jobs.c.repo_id],
        set_={name: excluded[name] for name in ("state", "attempts", "queued_at", "last_error", "task_id")}
        | {"updated_at": sa.func.now()},
    )
    known = existing_repo_ids(conn, [r["repo_id"] for r in rows])
    values = sorted((dict(r) for r in rows if r["repo_id"] in known), key=lambda r: r["repo_id"])
    if values:
        conn.execute(stmt, values)


# One statement per batch whatever its size: the ids travel as one array.
_DONE_UPSERT = sa.text("""
    INSERT INTO jobs (repo_id, state, attempts, queued_at, task_id)
    SELECT repo_id, 'done', 0, :now, :task_id FROM unnest(CAST(:ids AS text[])) AS repo_id
    ON CONFLICT (repo_id) DO UPDATE SET
        state = 'done', attempts = 0, last_error = NULL, task_id = excluded.task_id, updated_at = now()
""")


def mark_done(conn: Connection, ids: Sequence[str], task_id: str | None) -> None:
    if ids:
        conn.execute(_DONE_UPSERT, {"ids": sorted(ids), "now": utcnow(), "task_id": task_id})


_QUEUED_UPSERT = {
    (reset, count): sa.text(f"""
        {"WITH counted AS (UPDATE runs SET enqueued = enqueued + :n WHERE id = :run_id)" if count else ""}
        INSERT INTO jobs (repo_id, state, attempts, queued_at, run_id)
        SELECT repo_id, 'queued', 0, :now, CAST(:run_id AS int) FROM unnest(CAST(:ids AS text[])) AS repo_id
        ON CONFLICT (repo_id) DO UPDATE SET
            state = 'queued', queued_at = excluded.queued_at, updated_at = now(), run_id = excluded.run_id
            {", attempts = 0" if reset else ""}
    """)
    for reset in (True, False) for count in (True, False)
}


def mark_queued(
    conn: Connection, ids: Sequence[str], *, reset_attempts: bool = True, run_id: int | None = None,
    count_for_run: bool = False,
) -> None:
    """Record that ``ids`` were sent to the queue now (the sweeper measures from this time), by ``run_id``;
    ``count_for_run``: add them to the run's enqueued count in the same statement (one round trip a
    batch for the producer: a single statement is atomic without a transaction around it)."""
    if ids:
        count = count_for_run and run_id is not None
        conn.execute(_QUEUED_UPSERT[reset_attempts, count],
                     {"ids": sorted(set(ids)), "now": utcnow(), "run_id": run_id}
                     | ({"n": len(ids)} if count else {}))


def schedule_retries(conn: Connection, retries: Sequence[tuple[str, int, float, str]], task_id: str | None) -> None:
    """(repo_id, attempts, delay_s, error): state failed, due again after the delay."""
    now = utcnow()
    upsert_jobs(
        conn,
        [
            {"repo_id": repo_id, "state": "failed", "attempts": attempts,
             "queued_at": now + timedelta(seconds=delay), "last_error": error[:2000], "task_id": task_id}
            for repo_id, attempts, delay, error in retries
        ],
    )


def job_state_counts(conn: Connection) -> dict[str, int]:
    """Repos per job state (every state present, zero when none), plus 'untracked': never enqueued.
    Read off the trigger-kept counts (db.counts): a few rows, whatever the index's size."""
    return _job_states(table_counts(conn))


def _job_states(totals: Mapping[str, int]) -> dict[str, int]:
    counts = {state: totals.get(f"jobs:{state}", 0) for state in JOB_STATES}
    counts["untracked"] = max(0, totals.get("repos", 0) - sum(counts.values()))
    return counts


def status_counts(conn: Connection) -> dict[str, int]:
    """What `tagger status` shows: repos, tagged, dead letters, and repos pending, failed or done."""
    totals = table_counts(conn)
    states = _job_states(totals)
    return {
        "repos": sum(states.values()),  # every repo is in one state, 'untracked' included
        "tagged": totals.get("results", 0),
        "dead": totals.get("dead_letters", 0),
        "pending": states["queued"],
        "failed": states["failed"],
        "done": states["done"],
    }


@dataclass(frozen=True, slots=True)
class RepoOutcome:
    """Where a repo stands: its job state, its result and its dead letter, if any."""

    id: str
    name: str
    state: str | None
    tag_ids: list[int] | None
    latency_ms: float | None
    error_class: str | None
    message: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> RepoOutcome:
        return cls(row["id"], row["name"], row["state"], None if row["tag_ids"] is None else list(row["tag_ids"]),
                   row["latency_ms"], row["error_class"], row["message"])


def repo_outcomes(conn: Connection, ids: Sequence[str]) -> list[RepoOutcome]:
    """Per repo (in id order): name, job state, result (tag_ids, latency_ms) and dead letter, if any."""
    query = (
        sa.select(repos.c.id, repos.c.name, jobs.c.state, results.c.tag_ids, results.c.latency_ms,
                  dead_letters.c.error_class, dead_letters.c.message)
        .outerjoin(jobs, jobs.c.repo_id == repos.c.id)
        .outerjoin(results, results.c.repo_id == repos.c.id)
        .outerjoin(dead_letters, dead_letters.c.repo_id == repos.c.id)
        .where(repos.c.id.in_(list(ids)))
        .order_by(repos.c.id)
    )
    return [RepoOutcome.from_row(row) for row in conn.execute(query).mappings()]
