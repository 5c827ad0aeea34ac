"""Runs: each piece of tagging work started by an enqueue (live) or a canary, and its progress."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from db.configuration import Configuration
from db.counts import CANARY_COUNTERS, run_counters
from db.models import JOB_STATES, runs
from tagger.errors import InputError


@dataclass(frozen=True, slots=True)
class Run:
    id: int
    kind: str  # "live" or "canary"
    started_at: datetime
    started_by: str
    label: str | None
    configuration: Configuration
    selection: str
    enqueued: int
    promoted_at: datetime | None
    rolled_back_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Run:
        return cls(row["id"], row["kind"], row["started_at"], row["started_by"], row["label"],
                   Configuration.from_row(row), row["selection"], row["enqueued"], row["promoted_at"],
                   row["rolled_back_at"])

    @property
    def is_canary(self) -> bool:
        return self.kind == "canary"

    def as_dict(self) -> dict[str, Any]:
        """The row as stored: the configuration's fields at the top level."""
        values: dict[str, Any] = {}
        for name in self.__slots__:
            if name == "configuration":
                values |= self.configuration.as_dict()
            else:
                values[name] = getattr(self, name)
        return values


def create_run(conn: Connection, *, kind: str, started_by: str, label: str | None, selection: str,
               configuration: Configuration) -> int:
    """Record a run; its id."""
    return int(conn.execute(
        sa.insert(runs).values(kind=kind, started_by=started_by, label=label, selection=selection,
                               **configuration.as_dict())
        .returning(runs.c.id)
    ).scalar_one())


def add_run_enqueued(conn: Connection, run_id: int, n: int) -> None:
    conn.execute(sa.update(runs).where(runs.c.id == run_id).values(enqueued=runs.c.enqueued + n))


def get_run(conn: Connection, run_id: int) -> Run | None:
    row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
    return Run.from_row(row) if row else None


def existing_run(conn: Connection, run_id: int, kind: str | None = None) -> Run:
    """Run ``run_id``, as an operator named it: InputError when there is no such run (or not of ``kind``)."""
    run = get_run(conn, run_id)
    if run is None:
        raise InputError(f"there is no run {run_id} (see `tagger runs`)")
    if kind is not None and run.kind != kind:
        raise InputError(f"run {run_id} is a {run.kind} run, not a {kind} run")
    return run


def list_runs(conn: Connection, limit: int) -> list[Run]:
    return [Run.from_row(r) for r in conn.execute(sa.select(runs).order_by(runs.c.id.desc()).limit(limit)).mappings()]


# A run's writes and its rollback or promotion are ordered by a transaction-level advisory lock on the run
# (the workers' writes share it, rollback and promote take it alone), not by a lock on the run's row: a
# row that a fleet share-locks at once costs a new MultiXact of all its lockers, and a WAL record, at
# every batch, all on one page. Keyed by two int4s: a key space apart from db.locks' bigint keys.
RUN_LOCK_SPACE = 0x7461_6767  # "tagg"
_LOCK_SHARED = sa.text("SELECT pg_advisory_xact_lock_shared(:space, :run)")
_LOCK_ALONE = sa.text("SELECT pg_advisory_xact_lock(:space, :run)")


def lock_run_for_write(conn: Connection, run_id: int) -> Run | None:
    """A worker's write of run ``run_id``: the run's lock, shared, until the write commits, so a rollback
    or promote (lock_run) waits for the writes in flight, and every later write sees its mark. The row is
    read once the lock is held, by a statement of its own: its snapshot has the mark of any rollback that
    held the lock before."""
    conn.execute(_LOCK_SHARED, {"space": RUN_LOCK_SPACE, "run": run_id})
    return get_run(conn, run_id)


def lock_run(conn: Connection, run_id: int) -> Run | None:
    """Rollback and promote: the run's lock, alone, once every write of the run in flight is in; then its row."""
    conn.execute(_LOCK_ALONE, {"space": RUN_LOCK_SPACE, "run": run_id})
    return get_run(conn, run_id)


def mark_run_promoted(conn: Connection, run_id: int) -> None:
    conn.execute(sa.update(runs).where(runs.c.id == run_id).values(promoted_at=sa.func.now()))


def mark_run_rolled_back(conn: Connection, run_id: int) -> None:
    conn.execute(sa.update(runs).where(runs.c.id == run_id)
                 .values(rolled_back_at=sa.func.coalesce(runs.c.rolled_back_at, sa.func.now())))


def run_counts(conn: Connection, run: Run) -> dict[str, int]:
    """Progress of a run. Live: its repos by job state (while this run is the last to enqueue them),
    results it wrote that are still current, and repos it tagged whose live result is another's since,
    from its trigger-kept counters (db.counts). Canary: its sample by state, and how much was promoted."""
    if run.is_canary:
        kept = run_counters(conn, [run.id], CANARY_COUNTERS)[run.id]
        by_state = {s: kept[f"shadow_results:{s}"] for s in JOB_STATES}
        return {"sample": sum(by_state.values()), **by_state, "promoted": kept["shadow_results:promoted"]}
    counters = run_counters(conn, [run.id])[run.id]
    return {"enqueued": run.enqueued, **{s: counters[f"jobs:{s}"] for s in JOB_STATES},
            "results_current": counters["results"],
            "results_replaced_since": max(0, counters["tagged"] - counters["results"])}
