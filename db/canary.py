"""A canary's shadow results: its sample's state and results, which no reader of live results sees,
their diff against live, and their promotion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from db.models import MANUAL, RESULT_NAMES, ResultRow, repos, results, shadow_results
from db.results import any_of
from db.runs import mark_run_promoted


def insert_shadow_queued(conn: Connection, run_id: int, ids: Sequence[str]) -> None:
    if ids:
        conn.execute(sa.insert(shadow_results),
                     [{"run_id": run_id, "repo_id": i, "state": "queued"} for i in sorted(ids)])


def write_shadow_results(conn: Connection, run_id: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """A canary's outcomes: result rows (state done, the result's fields), or failures (state failed or
    dead, attempts, error). Only the run's own rows are written: never a live table."""
    for row in sorted(rows, key=lambda r: r["repo_id"]):
        query = sa.update(shadow_results).where(shadow_results.c.run_id == run_id,
                                                shadow_results.c.repo_id == row["repo_id"])
        if row["state"] != "done":  # a redelivered copy that failed never undoes a result
            query = query.where(shadow_results.c.state != "done")
        conn.execute(query.values(**{k: v for k, v in row.items() if k != "repo_id"}, updated_at=sa.func.now()))


@dataclass(frozen=True, slots=True)
class ShadowVsLive:
    """One repo of a canary's sample: its shadow tags against its live ones (None: untagged)."""

    repo_id: str
    name: str
    state: str
    shadow: list[int] | None
    live: list[int] | None
    pinned: bool

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ShadowVsLive:
        return cls(row["repo_id"], row["name"], row["state"], None if row["shadow"] is None else list(row["shadow"]),
                   None if row["live"] is None else list(row["live"]), bool(row["pinned"]))


def shadow_against_live(conn: Connection, run_id: int) -> list[ShadowVsLive]:
    """Each repo of a canary's sample, in id order."""
    query = (
        sa.select(shadow_results.c.repo_id, repos.c.name, shadow_results.c.state,
                  shadow_results.c.tag_ids.label("shadow"), results.c.tag_ids.label("live"),
                  (results.c.backend == MANUAL).label("pinned"))
        .join(repos, repos.c.id == shadow_results.c.repo_id)
        .outerjoin(results, results.c.repo_id == shadow_results.c.repo_id)
        .where(shadow_results.c.run_id == run_id)
        .order_by(shadow_results.c.repo_id)
    )
    return [ShadowVsLive.from_row(row) for row in conn.execute(query).mappings()]


def promotable_shadow_results(conn: Connection, run_id: int) -> list[ResultRow]:
    """A canary's results not promoted yet, as result rows for db.results.upsert_results."""
    rows = conn.execute(
        sa.select(shadow_results.c.repo_id, *(shadow_results.c[name] for name in RESULT_NAMES),
                  shadow_results.c.run_id)
        .where(shadow_results.c.run_id == run_id, shadow_results.c.state == "done",
               shadow_results.c.promoted_at.is_(None))
        .order_by(shadow_results.c.repo_id)
    ).mappings()
    return [dict(row) for row in rows]


def mark_promoted(conn: Connection, run_id: int, ids: Sequence[str]) -> None:
    conn.execute(sa.update(shadow_results).where(shadow_results.c.run_id == run_id,
                                                 shadow_results.c.repo_id == any_of(list(ids)))
                 .values(promoted_at=sa.func.now()))
    mark_run_promoted(conn, run_id)
