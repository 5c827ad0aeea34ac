"""A canary's shadow results: its sample's state and results, which no reader of live results sees,
their diff against live, and their promotion."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from db.engine import bulk_write_settings
from db.models import MANUAL, RESULT_FIELDS, RESULT_NAMES, VERSION_NAMES, ResultField, repos, results, shadow_results
from db.results import any_of, field_arrays, unnest_rows
from db.runs import mark_run_promoted


def insert_shadow_queued(conn: Connection, run_id: int, ids: Sequence[str]) -> None:
    if ids:
        conn.execute(sa.insert(shadow_results),
                     [{"run_id": run_id, "repo_id": i, "state": "queued"} for i in sorted(ids)])


_REPO = ResultField("repo_id", sa.Text())
_SHADOW_DONE = (_REPO, *RESULT_FIELDS)
_SHADOW_FAILED = (_REPO, ResultField("state", sa.Text()), ResultField("attempts", sa.Integer(), array="int[]"),
                  ResultField("error", sa.Text()))
# One statement per kind of outcome, whatever the batch's size; id order (as every multi-row write).
_WRITE_SHADOW_DONE = sa.text(f"""
    UPDATE shadow_results s SET state = 'done', error = NULL, updated_at = now(),
        {", ".join(f"{f.name} = r.{f.name}{f.cast}" for f in RESULT_FIELDS)}
    FROM (SELECT * FROM {unnest_rows(_SHADOW_DONE)} ORDER BY repo_id) AS r
    WHERE s.run_id = :run AND s.repo_id = r.repo_id
""")
# A redelivered copy that failed never undoes a result.
_WRITE_SHADOW_FAILED = sa.text(f"""
    UPDATE shadow_results s SET state = r.state, attempts = r.attempts, error = r.error, updated_at = now()
    FROM (SELECT * FROM {unnest_rows(_SHADOW_FAILED)} ORDER BY repo_id) AS r
    WHERE s.run_id = :run AND s.repo_id = r.repo_id AND s.state <> 'done'
""")


def write_shadow_results(conn: Connection, run_id: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """A canary's outcomes: result rows (state done, the result's fields), or failures (state failed or
    dead, attempts, error). Only the run's own rows are written: never a live table."""
    ordered = sorted(rows, key=lambda r: r["repo_id"])
    done = [r for r in ordered if r["state"] == "done"]
    failed = [r for r in ordered if r["state"] != "done"]
    if done:
        conn.execute(_WRITE_SHADOW_DONE, {"run": run_id, **field_arrays(done, _SHADOW_DONE)})
    if failed:
        conn.execute(_WRITE_SHADOW_FAILED, {"run": run_id, **field_arrays(failed, _SHADOW_FAILED)})


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


def iter_shadow_against_live(conn: Connection, run_id: int, *, only: Sequence[str] | None = None,
                             rows_at_once: int = 5000) -> Iterator[ShadowVsLive]:
    """Each repo of a canary's sample (``only``: those whose id or name is one of these), in id order, from
    a server-side cursor in the caller's transaction: ``rows_at_once`` in memory at a time, whatever the
    sample's size."""
    query = (
        sa.select(shadow_results.c.repo_id, repos.c.name, shadow_results.c.state,
                  shadow_results.c.tag_ids.label("shadow"), results.c.tag_ids.label("live"),
                  (results.c.backend == MANUAL).label("pinned"))
        .join(repos, repos.c.id == shadow_results.c.repo_id)
        .outerjoin(results, results.c.repo_id == shadow_results.c.repo_id)
        .where(shadow_results.c.run_id == run_id)
        .order_by(shadow_results.c.repo_id)
    )
    if only is not None:
        keys = sorted(set(only))
        query = query.where(sa.or_(shadow_results.c.repo_id == any_of(keys), repos.c.name == any_of(keys)))
    for row in conn.execute(query.execution_options(yield_per=rows_at_once)).mappings():
        yield ShadowVsLive.from_row(row)


@dataclass(frozen=True, slots=True)
class ShadowDiff:
    """A canary's sample against live, counted by the server. Only repos the canary has tagged are
    compared (tags as sets); an untagged live repo counts as having no tags."""

    sample: int
    done: int
    pending: int  # queued, or failed and waiting for a retry
    dead: int
    changed: int  # done, with other tags than live
    pinned: int  # done, and live tags pinned by hand (which a promote leaves alone)
    added: dict[int, int]  # tag id -> changed repos that gain it
    removed: dict[int, int]  # tag id -> changed repos that lose it
    changed_most: list[tuple[str, list[int], list[int], int]]  # (repo id, live, shadow, tags gained + lost)

    @property
    def unchanged(self) -> int:
        return self.done - self.changed


# One statement, one pass over the sample (through the run's shadow rows and the live results' primary
# key): the counts, each tag's gains and losses, and the biggest changes (ties in id order, by code point
# as the ids are compared everywhere else), in the server's memory, whatever the sample's size.
_DIFF = sa.text("""
    WITH sample AS MATERIALIZED (
        SELECT s.repo_id, s.state, coalesce(r.backend = 'manual', false) AS pinned,
               coalesce(r.tag_ids, '{}') AS live, coalesce(s.tag_ids, '{}') AS shadow
        FROM shadow_results s LEFT JOIN results r ON r.repo_id = s.repo_id
        WHERE s.run_id = :run
    ), changed AS MATERIALIZED (
        SELECT repo_id, live, shadow,
               ARRAY(SELECT unnest(shadow) EXCEPT SELECT unnest(live)) AS gained,
               ARRAY(SELECT unnest(live) EXCEPT SELECT unnest(shadow)) AS lost
        FROM sample WHERE state = 'done' AND NOT (live @> shadow AND shadow @> live)
    )
    SELECT count(*) AS sample,
        count(*) FILTER (WHERE state = 'done') AS done,
        count(*) FILTER (WHERE state IN ('queued', 'failed')) AS pending,
        count(*) FILTER (WHERE state = 'dead') AS dead,
        (SELECT count(*) FROM changed) AS changed,
        count(*) FILTER (WHERE state = 'done' AND pinned) AS pinned,
        (SELECT coalesce(json_object_agg(tag, n), '{}') FROM
            (SELECT tag, count(*) AS n FROM changed, unnest(gained) AS tag GROUP BY tag) AS g) AS added,
        (SELECT coalesce(json_object_agg(tag, n), '{}') FROM
            (SELECT tag, count(*) AS n FROM changed, unnest(lost) AS tag GROUP BY tag) AS g) AS removed,
        (SELECT coalesce(json_agg(json_build_array(repo_id, live, shadow, n) ORDER BY n DESC, repo_id COLLATE "C"),
                         '[]') FROM
            (SELECT repo_id, live, shadow, cardinality(gained) + cardinality(lost) AS n FROM changed
             ORDER BY n DESC, repo_id COLLATE "C" LIMIT :top) AS t) AS changed_most
    FROM sample
""")


def diff_shadow_against_live(conn: Connection, run_id: int, top: int) -> ShadowDiff:
    """The canary's sample against live (ShadowDiff), with its ``top`` biggest changes."""
    row = conn.execute(_DIFF, {"run": run_id, "top": top}).mappings().one()
    return ShadowDiff(
        int(row["sample"]), int(row["done"]), int(row["pending"]), int(row["dead"]), int(row["changed"]),
        int(row["pinned"]), {int(tag): int(n) for tag, n in row["added"].items()},
        {int(tag): int(n) for tag, n in row["removed"].items()},
        [(repo_id, list(live), list(shadow), int(n)) for repo_id, live, shadow, n in row["changed_most"]])


_PROMOTABLE = "s.run_id = :run AND s.state = 'done' AND s.promoted_at IS NULL"
_SHADOW_FIELDS = ", ".join(f"s.{name}" for name in RESULT_NAMES)
_VERSION_COLUMNS = ", ".join(VERSION_NAMES)
# The write step's own conditions (db.results): never over tags pinned by hand, nor over a result
# computed from a newer README; a repo the canary already wrote (run_id = :run) is not written twice.
_REPLACEABLE = "r.backend <> 'manual' AND r.readme_version <= s.readme_version AND r.run_id IS DISTINCT FROM :run"
# A first tagging (no live result): in a statement of its own, before the replacing one, so that a
# result a live worker inserts meanwhile (the insert's conflict) is found and replaced by the next
# statement's snapshot. The anti-join spares the rows with a live result a speculative insert each.
_PROMOTE_NEW = sa.text(f"""
    INSERT INTO results (repo_id, {", ".join(RESULT_NAMES)}, run_id, tagged_at, changed_at)
    SELECT s.repo_id, {_SHADOW_FIELDS}, :run, now(), now() FROM shadow_results s
    WHERE {_PROMOTABLE} AND NOT EXISTS (SELECT 1 FROM results r WHERE r.repo_id = s.repo_id)
    ORDER BY s.repo_id
    ON CONFLICT (repo_id) DO NOTHING
""")
# The replacements, one statement: the live results to replace, locked in id order (as a worker's batch
# locks: no deadlock) with the shadow result beside each; their versions archived; the shadow results
# written over them; and the repos whose live result is now the canary's marked promoted. Each row is
# locked before it is written (the writes read the locked rows), and the archive reads the locked
# versions: what the four statements before did with the run's rows read four times.
_PROMOTE_REPLACE = sa.text(f"""
    WITH locked AS (
        SELECT {", ".join(f"r.{name}" for name in VERSION_NAMES)},
               {", ".join(f"s.{name} AS new_{name}" for name in RESULT_NAMES)}
        FROM results r JOIN shadow_results s ON s.repo_id = r.repo_id
        WHERE {_PROMOTABLE} AND {_REPLACEABLE} ORDER BY r.repo_id FOR UPDATE OF r
    ), replaced AS (
        UPDATE results r SET {", ".join(f"{name} = l.new_{name}" for name in RESULT_NAMES)},
            run_id = :run, tagged_at = now(), changed_at = now()
        FROM locked l WHERE r.repo_id = l.repo_id
        RETURNING r.repo_id
    ), archived AS (
        INSERT INTO result_history ({_VERSION_COLUMNS}, replaced_by_run, replaced_reason)
        SELECT {_VERSION_COLUMNS}, :run, 'run' FROM locked
    ), marked AS (
        UPDATE shadow_results s SET promoted_at = now()
        FROM (SELECT repo_id FROM replaced UNION ALL SELECT repo_id FROM results WHERE run_id = :run) AS live
        WHERE s.repo_id = live.repo_id AND {_PROMOTABLE}
        RETURNING 1
    )
    SELECT count(*) FROM marked
""")
_NOT_PROMOTED = sa.text(f"""
    SELECT count(*), (array_agg(s.repo_id ORDER BY s.repo_id))[1:CAST(:sample AS int)]
    FROM shadow_results s WHERE {_PROMOTABLE}
""")


@dataclass(frozen=True, slots=True)
class Promotion:
    promoted: int  # written live now
    skipped: int  # pinned by hand, or README changed since the canary read it
    skipped_sample: list[str]  # a bounded sample of those, in id order


def promote_shadow_results(conn: Connection, run_id: int, sample: int = 20) -> Promotion:
    """Write a canary's results not promoted yet to live, set-based (three statements whatever the
    sample's size), with the write step's conditions; the replaced versions go to history. In the
    caller's transaction: all or nothing."""
    params = {"run": run_id, "sample": sample}
    bulk_write_settings(conn)
    conn.execute(_PROMOTE_NEW, params)
    promoted = int(conn.execute(_PROMOTE_REPLACE, params).scalar_one())
    skipped, skipped_sample = conn.execute(_NOT_PROMOTED, params).one()
    if promoted:
        mark_run_promoted(conn, run_id)
    return Promotion(promoted, int(skipped), list(skipped_sample or []))
