"""Live results, and the statements that write, archive and restore them: all built from the one
declaration of a result (db.models.RESULT_FIELDS).

Multi-row writes go in ascending ``repo_id`` order, so concurrent workers with overlapping batches
take row locks in the same order and cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.engine import Connection

from db.models import MANUAL, RESULT_FIELDS, RESULT_NAMES, VERSION_NAMES, ResultField, repos, result_history, results

# A result as a worker or a promote writes it: the repo, the result's fields, the run that wrote it.
_WRITTEN = (ResultField("repo_id", sa.Text()), *RESULT_FIELDS, ResultField("run_id", sa.Integer(), array="int[]"))
_ARRAYS = frozenset(f.name for f in RESULT_FIELDS if f.is_array)


def unnest_rows(fields: Sequence[ResultField]) -> str:
    """Rows from one array parameter per field: the server plans and runs ONE statement per batch, and
    the driver binds a few arrays instead of every value of every row (a third less worker CPU per
    written row than executemany)."""
    arrays = ", ".join(f"CAST(:{f.name} AS {f.array})" for f in fields)
    return f"unnest({arrays}) AS r({', '.join(f.name for f in fields)})"


def _insert(after: str = "") -> str:
    """The batch's rows into results, from one array parameter per field; ``after``: a relation the rows
    are joined to first (a data-modifying CTE they must wait for)."""
    return f"""
        INSERT INTO results ({", ".join(f.name for f in _WRITTEN)}, tagged_at, changed_at)
        SELECT {", ".join(f"r.{f.name}{f.cast}" for f in _WRITTEN)}, now(), now()
        FROM {f"{after}, " if after else ""}{unnest_rows(_WRITTEN)}
    """


_RESULTS_INSERT = sa.text(_insert() + " ON CONFLICT (repo_id) DO NOTHING RETURNING repo_id")
# A result never replaces one computed from a newer README, nor tags pinned by hand: the statement's own
# condition, evaluated on the locked row (a pin committed while this batch was in the model still wins).
_REPLACES = "results.readme_version <= excluded.readme_version AND results.backend <> 'manual'"
_HISTORY_COLUMNS = ", ".join(VERSION_NAMES)


def _archive_and_replace(only_seen: bool) -> sa.TextClause:
    """One statement: lock the results a batch replaces (id order), copy into history those the upsert's
    conditions let it replace (a rewrite by the same run, a redelivered batch, replaces its own version
    unarchived), then upsert. The archive is a data-modifying CTE the upsert's rows depend on (its count,
    joined to each), so it runs to completion first, locking and copying the old versions before the
    upsert (same command) replaces them.

    ``only_seen``: a conflicting row is replaced only if the archive locked it, and the written ids are
    returned. A result another writer inserted after this statement's snapshot is then left alone (and
    not returned) rather than replaced unarchived."""
    new = unnest_rows([_WRITTEN[0], RESULT_FIELDS[RESULT_NAMES.index("readme_version")], _WRITTEN[-1]])
    seen = " AND results.repo_id IN (SELECT repo_id FROM old)" if only_seen else ""
    return sa.text(f"""
        WITH n AS (SELECT * FROM {new}
        ), old AS (
            SELECT results.*, n.readme_version AS new_version, n.run_id AS new_run
            FROM results JOIN n ON n.repo_id = results.repo_id
            ORDER BY results.repo_id
            FOR UPDATE OF results
        ), archived AS (
            INSERT INTO result_history ({_HISTORY_COLUMNS}, replaced_by_run, replaced_reason)
            SELECT {_HISTORY_COLUMNS}, new_run, 'run'
            FROM old
            WHERE backend <> 'manual' AND readme_version <= new_version
              AND (run_id IS NULL OR new_run IS NULL OR run_id <> new_run)
            RETURNING 1
        )
        {_insert("(SELECT count(*) FROM archived) AS a")}
        ON CONFLICT (repo_id) DO UPDATE SET
            {", ".join(f"{name} = excluded.{name}" for name in RESULT_NAMES)},
            tagged_at = now(), changed_at = now(), run_id = excluded.run_id
        WHERE {_REPLACES}{seen}
        {"RETURNING results.repo_id" if only_seen else ""}
    """)


_WRITE = _archive_and_replace(only_seen=True)
_ARCHIVE_AND_REPLACE = _archive_and_replace(only_seen=False)


def any_of(values: Sequence[Any], item: Any = None) -> Any:
    """``= ANY(array)``: one parameter, whatever the number of values (IN would bind one each)."""
    return sa.any_(sa.literal(list(values), ARRAY(item if item is not None else sa.Text())))


def utcnow() -> datetime:
    return datetime.now(UTC)


def upsert_results(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Store results: each row holds ``repo_id``, the result's fields (db.models.RESULT_FIELDS; the
    nullable ones may be left out) and optionally ``run_id``. A replaced result is kept in history."""
    if not rows:
        return
    defaults = {f.name: None for f in _WRITTEN if f.nullable} | {"run_id": None}
    ordered = sorted((defaults | dict(row) for row in rows), key=lambda r: r["repo_id"])
    # One statement for a batch: new repos inserted, the others archived and replaced.
    written = set(conn.execute(_WRITE, _arrays(ordered)).scalars())
    rest = [row for row in ordered if row["repo_id"] not in written]
    if not rest:
        return
    # Not written: kept by the conditions (pinned, a newer README), or inserted by another writer after
    # the statement's snapshot. The careful path: insert what still has no result (waiting for any other
    # writer's insert to commit), then lock, archive and replace the others, seen by a new snapshot; so no
    # version is ever replaced unseen.
    inserted = set(conn.execute(_RESULTS_INSERT, _arrays(rest)).scalars())
    rest = [row for row in rest if row["repo_id"] not in inserted]
    if rest:
        conn.execute(_ARCHIVE_AND_REPLACE, _arrays(rest))


def _arrays(rows: Sequence[Mapping[str, Any]], fields: Sequence[ResultField] = _WRITTEN) -> dict[str, list[Any]]:
    return {
        f.name: [_array_literal(row[f.name]) for row in rows] if f.name in _ARRAYS else [row[f.name] for row in rows]
        for f in fields
    }


def field_arrays(rows: Sequence[Mapping[str, Any]], fields: Sequence[ResultField]) -> dict[str, list[Any]]:
    """The parameters of unnest_rows(fields): one array per field (a missing nullable field is NULL)."""
    defaults = {f.name: None for f in fields if f.nullable}
    return _arrays([defaults | dict(row) for row in rows], fields)


def _array_literal(values: Sequence[int | float] | None) -> str | None:
    return None if values is None else "{" + ",".join(map(str, values)) + "}"


def archive_results(conn: Connection, ids: Sequence[str], reason: str, by_run: int | None = None) -> None:
    """Copy the live results of ``ids`` into history as replaced for ``reason`` (by run ``by_run``)."""
    if not ids:
        return
    columns = [results.c[name] for name in VERSION_NAMES]
    conn.execute(sa.insert(result_history).from_select(
        [*VERSION_NAMES, "replaced_by_run", "replaced_reason"],
        sa.select(*columns, sa.cast(sa.literal(by_run), sa.Integer), sa.literal(reason))
        .where(results.c.repo_id == any_of(sorted(ids)))
        .order_by(results.c.repo_id),
    ))


def restore_versions(conn: Connection, history_ids: Sequence[int]) -> None:
    """Make these history rows the live results of their repos again (each repo must have a result)."""
    if not history_ids:
        return
    copied = [name for name in VERSION_NAMES if name != "repo_id"]
    conn.execute(
        sa.update(results)
        .where(results.c.repo_id == result_history.c.repo_id,
               result_history.c.id == any_of(list(history_ids), sa.Integer()))
        .values({name: result_history.c[name] for name in copied} | {"changed_at": sa.func.now()})
    )


def delete_results(conn: Connection, ids: Sequence[str]) -> None:
    if ids:
        conn.execute(sa.delete(results).where(results.c.repo_id.in_(list(ids))))


def lock_results(conn: Connection, ids: Sequence[str]) -> dict[str, str]:
    """Lock the live results of ``ids`` (id order); each one's backend."""
    rows = conn.execute(sa.select(results.c.repo_id, results.c.backend).where(results.c.repo_id.in_(list(ids)))
                        .order_by(results.c.repo_id).with_for_update())
    return {repo_id: backend for repo_id, backend in rows}


def write_result(conn: Connection, row: Mapping[str, Any]) -> None:
    """Make ``row`` (repo_id and every result field) the repo's live result, unconditionally: a pin."""
    values = {name: row[name] for name in RESULT_NAMES} | {"run_id": row.get("run_id")}
    stmt = insert(results).values(repo_id=row["repo_id"], **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[results.c.repo_id],
                                            set_=values | {"tagged_at": sa.func.now(), "changed_at": sa.func.now()}))


def tag_rate(conn: Connection, window_s: int = 60) -> float:
    """Live results changed per second over the last ``window_s`` seconds (through changed_at's index:
    proportional to the window's writes, not the index)."""
    since = utcnow() - timedelta(seconds=window_s)
    n = conn.execute(sa.select(sa.func.count()).select_from(results).where(results.c.changed_at >= since)).scalar_one()
    return n / window_s


@dataclass(frozen=True, slots=True)
class ExportedResult:
    repo_id: str
    tag_ids: list[int]
    tag_scores: list[float] | None
    pinned: bool  # tags set by hand


def iter_export(conn: Connection, page: int = 5000) -> Iterator[ExportedResult]:
    """Every tagged repo's result, in id order, keyset-paged: memory stays flat."""
    after = ""
    while True:
        rows = conn.execute(
            sa.select(results.c.repo_id, results.c.tag_ids, results.c.tag_scores, results.c.backend == MANUAL)
            .where(results.c.repo_id > after).order_by(results.c.repo_id).limit(page)
        ).all()
        if not rows:
            return
        for repo_id, tag_ids, tag_scores, pinned in rows:
            yield ExportedResult(repo_id, list(tag_ids),
                                 None if tag_scores is None else [float(s) for s in tag_scores], bool(pinned))
        after = rows[-1][0]


def iter_results(conn: Connection, page: int = 5000) -> Iterator[tuple[str, list[int]]]:
    """(repo_id, tag_ids) for every tagged repo, in id order, page by page."""
    for result in iter_export(conn, page):
        yield result.repo_id, result.tag_ids


def iter_scored_results(conn: Connection, page: int = 5000) -> Iterator[tuple[str, list[int], list[float] | None]]:
    """(repo_id, tag_ids, tag_scores or None) for every tagged repo, in id order, page by page."""
    for result in iter_export(conn, page):
        yield result.repo_id, result.tag_ids, result.tag_scores


@dataclass(frozen=True, slots=True)
class ReviewItem:
    repo_id: str
    name: str
    tag_ids: list[int]
    tag_scores: list[float] | None
    confidence: float
    backend: str
    model: str

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ReviewItem:
        return cls(row["repo_id"], row["name"], list(row["tag_ids"]),
                   None if row["tag_scores"] is None else [float(s) for s in row["tag_scores"]],
                   float(row["confidence"]), row["backend"], row["model"])


def least_confident_results(conn: Connection, limit: int) -> list[ReviewItem]:
    """The ``limit`` results with the lowest confidence (unscored ones have none and are left out),
    least confident first: the repos most worth a human look."""
    query = (
        sa.select(results.c.repo_id, repos.c.name, results.c.tag_ids, results.c.tag_scores, results.c.confidence,
                  results.c.backend, results.c.model)
        .join(repos, repos.c.id == results.c.repo_id)
        .where(results.c.confidence.is_not(None))
        .order_by(results.c.confidence, results.c.repo_id)
        .limit(limit)
    )
    return [ReviewItem.from_row(row) for row in conn.execute(query).mappings()]


@dataclass(frozen=True, slots=True)
class ResultTotals:
    count: int
    latency_ms: float  # backend milliseconds recorded in them: the benchmarks' split of worker time
    last_tagged_at: datetime | None  # when the newest was written: a run's end, however seldom one polls


def result_totals(conn: Connection) -> ResultTotals:
    count, latency, last = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(results.c.latency_ms), 0.0),
                  sa.func.max(results.c.tagged_at)).select_from(results)
    ).one()
    return ResultTotals(int(count), float(latency), last)
