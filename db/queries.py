"""Every SQL operation of the product, one function each, named after what it does.

Multi-row writes go in ascending ``repo_id`` order, so concurrent workers with overlapping batches
take row locks in the same order and cannot deadlock.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from db.models import (
    JOB_STATES,
    MANUAL,
    dead_letters,
    jobs,
    manual_tags,
    repos,
    result_history,
    results,
    runs,
    shadow_results,
    tags,
    taxonomy_versions,
)
from tagger.readme import readme_hash
from tagger.taxonomy import Taxonomy

Selection = Literal["all", "untagged", "stale"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _insert(conn: Connection, table: sa.Table) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


# --- taxonomy ---------------------------------------------------------------------------------


def replace_taxonomy(conn: Connection, taxonomy: Taxonomy, source: str) -> int:
    """Make ``taxonomy`` the current one; a new content gets a new (higher) taxonomy version."""
    content_hash = taxonomy.version_hash
    version = conn.execute(
        sa.select(taxonomy_versions.c.version).where(taxonomy_versions.c.content_hash == content_hash)
    ).scalar()
    latest = current_taxonomy_version(conn)
    if version is None or version != latest:
        conn.execute(sa.delete(taxonomy_versions).where(taxonomy_versions.c.content_hash == content_hash))
        version = conn.execute(
            sa.insert(taxonomy_versions)
            .values(content_hash=content_hash, source=source)
            .returning(taxonomy_versions.c.version)
        ).scalar_one()
    # All rows go and the new ones come in: a kept id may carry another name, and a kept name another id.
    conn.execute(sa.delete(tags))
    conn.execute(
        sa.insert(tags), [{"id": t.id, "name": t.name, "description": t.description} for t in taxonomy.tags]
    )
    return int(version)


def current_taxonomy_version(conn: Connection) -> int | None:
    return conn.execute(sa.select(sa.func.max(taxonomy_versions.c.version))).scalar()


def count_repos_tagged_with(conn: Connection, tag_ids: Collection[int]) -> int:
    """Repos whose result holds any of ``tag_ids``."""
    if not tag_ids:
        return 0
    elements = "jsonb_array_elements_text" if conn.dialect.name == "postgresql" else "json_each"
    query = sa.text(
        f"SELECT count(*) FROM results WHERE EXISTS "
        f"(SELECT 1 FROM {elements}(results.tag_ids) AS e WHERE CAST(e.value AS INTEGER) IN :ids)"
    ).bindparams(sa.bindparam("ids", expanding=True))
    return int(conn.execute(query, {"ids": sorted(tag_ids)}).scalar_one())


def load_taxonomy(conn: Connection) -> Taxonomy:
    rows = conn.execute(sa.select(tags.c.id, tags.c.name, tags.c.description)).mappings()
    return Taxonomy.from_entries(dict(row) for row in rows)


# --- repos ------------------------------------------------------------------------------------


def upsert_repos(conn: Connection, rows: Sequence[Mapping[str, str]]) -> int:
    """Insert or update repos (``id``, ``name``, ``readme``); a changed README bumps its version."""
    if not rows:
        return 0
    by_id = {row["id"]: row for row in rows}  # the last line for an id wins
    values = [
        {"id": i, "name": r.get("name") or "", "readme": r["readme"], "readme_hash": readme_hash(r["readme"])}
        for i, r in sorted(by_id.items())
    ]
    stmt = _insert(conn, repos)
    changed = repos.c.readme_hash != stmt.excluded.readme_hash
    stmt = stmt.on_conflict_do_update(
        index_elements=[repos.c.id],
        set_={
            "name": stmt.excluded.name,
            "readme": stmt.excluded.readme,
            "readme_hash": stmt.excluded.readme_hash,
            "readme_version": repos.c.readme_version + sa.case((changed, 1), else_=0),
            "updated_at": sa.func.now(),
        },
        where=changed | (repos.c.name != stmt.excluded.name),
    )
    conn.execute(stmt, values)
    return len(values)


@dataclass(frozen=True, slots=True)
class ReadmeRow:
    id: str
    readme: str
    readme_hash: str
    readme_version: int
    dead_lettered: bool
    name: str = ""  # "owner/name": the scoring's name signal


def fetch_readmes(conn: Connection, ids: Sequence[str]) -> dict[str, ReadmeRow]:
    """The READMEs of a batch in one query; ids not in the index are simply absent."""
    query = (
        sa.select(
            repos.c.id,
            repos.c.readme,
            repos.c.readme_hash,
            repos.c.readme_version,
            dead_letters.c.repo_id.is_not(None).label("dead_lettered"),
            repos.c.name,
        )
        .outerjoin(dead_letters, dead_letters.c.repo_id == repos.c.id)
        .where(repos.c.id.in_(list(ids)))
    )
    return {row.id: ReadmeRow(*row) for row in conn.execute(query)}


def existing_repo_ids(conn: Connection, ids: Sequence[str]) -> set[str]:
    return set(conn.execute(sa.select(repos.c.id).where(repos.c.id.in_(list(ids)))).scalars())


def page_repo_ids(
    conn: Connection,
    selection: Selection,
    *,
    after: str | None,
    limit: int,
    current: Mapping[str, Any] | None = None,
) -> list[str]:
    """One keyset page of repo ids in ``selection``: memory stays flat for any index size.

    ``current`` (backend, model, prompt_version, taxonomy_version) defines what "stale" means:
    never tagged, README changed since its result, or tagged under another configuration.
    """
    query = sa.select(repos.c.id).order_by(repos.c.id).limit(limit)
    if after is not None:
        query = query.where(repos.c.id > after)
    if selection in ("untagged", "stale"):
        query = query.outerjoin(results, results.c.repo_id == repos.c.id)
        needs_work: sa.ColumnElement[bool] = results.c.repo_id.is_(None)
        if selection == "stale":
            if current is None:
                raise ValueError("stale selection needs the current configuration")
            needs_work = sa.or_(
                needs_work,
                results.c.readme_hash != repos.c.readme_hash,
                results.c.backend != current["backend"],
                results.c.model != current["model"],
                results.c.prompt_version != current["prompt_version"],
                results.c.taxonomy_version != current["taxonomy_version"],
            )
            # Not what is in flight (queued, or failed awaiting its retry: the sweeper re-sends those
            # whose message got lost) nor dead letters (`tagger dlq requeue`), unless the README
            # changed since: a scheduled refresh never re-sends what is already on its way.
            query = query.outerjoin(jobs, jobs.c.repo_id == repos.c.id)
            settled = sa.or_(
                jobs.c.repo_id.is_(None),
                jobs.c.state == "done",
                sa.and_(jobs.c.state == "dead", repos.c.updated_at > jobs.c.updated_at),
            )
            # Pinned repos (tags set by hand) are never stale: no refresh may replace them.
            needs_work = sa.and_(needs_work, settled, results.c.backend.is_distinct_from(MANUAL))
        query = query.where(needs_work)
    return list(conn.execute(query).scalars())


# --- results and job state ----------------------------------------------------------------------


def upsert_results(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Store results (each may name its ``run_id``); a result never replaces one computed from a newer
    README, nor tags pinned by hand (the statement's own condition, evaluated on the locked row: a pin
    committed while this batch was in the model still wins). A replaced result is kept in history.
    ``tag_scores`` (one per tag) and ``confidence`` (the best tag's) are optional: unscored backends
    have none."""
    if not rows:
        return
    ordered = sorted(({"tag_scores": None, "confidence": None, "run_id": None} | dict(row) for row in rows),
                     key=lambda r: r["repo_id"])
    if conn.dialect.name != "postgresql":
        # One writer at a time (SQLite): what is archived is exactly what the upsert replaces.
        _archive_replaced(conn, ordered)
        conn.execute(_results_upsert(conn.dialect.name), ordered)
        return
    # Repos without a result are inserted (a first tagging costs one statement, as before history);
    # the others (including any another writer inserted meanwhile: the insert waits for its commit) are
    # then locked in id order, archived, and replaced, so no version is ever replaced unseen.
    inserted = set(conn.execute(_RESULTS_INSERT_PG, _result_arrays(ordered)).scalars())
    rest = [row for row in ordered if row["repo_id"] not in inserted]
    if rest:
        arrays = _result_arrays(rest)
        conn.execute(_ARCHIVE_REPLACED_PG, {k: arrays[k] for k in ("repo_id", "readme_version", "run_id")})
        conn.execute(_RESULTS_UPSERT_PG, arrays)


def _result_arrays(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    columns = {name: [row[name] for row in rows] for name in _RESULT_COLUMNS}
    columns["tag_ids"] = [json.dumps(tag_ids) for tag_ids in columns["tag_ids"]]
    columns["tag_scores"] = [None if s is None else json.dumps(s) for s in columns["tag_scores"]]
    return columns


# PostgreSQL gets the hot path's multi-row writes as ONE statement per batch, whatever its size: each
# column travels as one array and unnest() turns the arrays back into rows. The server plans and runs
# one INSERT instead of one per row, and the driver binds a few arrays instead of every value of
# every row (a third less worker CPU per written row than executemany).
_RESULT_COLUMNS = ("repo_id", "tag_ids", "backend", "model", "prompt_version", "taxonomy_version", "readme_hash",
                   "readme_version", "raw_output", "latency_ms", "tag_scores", "confidence", "run_id")
_RESULTS_INSERT_SQL = """
    INSERT INTO results (repo_id, tag_ids, backend, model, prompt_version, taxonomy_version, readme_hash,
                         readme_version, raw_output, latency_ms, tag_scores, confidence, tagged_at, run_id)
    SELECT repo_id, tag_ids::jsonb, backend, model, prompt_version, taxonomy_version, readme_hash,
           readme_version, raw_output, latency_ms, tag_scores::jsonb, confidence, now(), run_id
    FROM unnest(CAST(:repo_id AS text[]), CAST(:tag_ids AS text[]), CAST(:backend AS text[]),
                CAST(:model AS text[]), CAST(:prompt_version AS text[]), CAST(:taxonomy_version AS int[]),
                CAST(:readme_hash AS text[]), CAST(:readme_version AS int[]), CAST(:raw_output AS text[]),
                CAST(:latency_ms AS float8[]), CAST(:tag_scores AS text[]), CAST(:confidence AS float8[]),
                CAST(:run_id AS int[]))
      AS r(repo_id, tag_ids, backend, model, prompt_version, taxonomy_version, readme_hash, readme_version,
           raw_output, latency_ms, tag_scores, confidence, run_id)
"""
_RESULTS_UPSERT_PG = sa.text(_RESULTS_INSERT_SQL + """
    ON CONFLICT (repo_id) DO UPDATE SET
        tag_ids = excluded.tag_ids, backend = excluded.backend, model = excluded.model,
        prompt_version = excluded.prompt_version, taxonomy_version = excluded.taxonomy_version,
        readme_hash = excluded.readme_hash, readme_version = excluded.readme_version,
        raw_output = excluded.raw_output, latency_ms = excluded.latency_ms, tag_scores = excluded.tag_scores,
        confidence = excluded.confidence, tagged_at = now(), run_id = excluded.run_id
    WHERE results.readme_version <= excluded.readme_version AND results.backend <> 'manual'
""")
_RESULTS_INSERT_PG = sa.text(_RESULTS_INSERT_SQL + " ON CONFLICT (repo_id) DO NOTHING RETURNING repo_id")
# Lock the results a batch replaces (id order) and copy into history those the upsert's conditions let
# it replace; a rewrite by the same run (a redelivered batch) replaces its own version unarchived.
_ARCHIVE_REPLACED_PG = sa.text("""
    WITH n AS (
        SELECT * FROM unnest(CAST(:repo_id AS text[]), CAST(:readme_version AS int[]), CAST(:run_id AS int[]))
          AS n(repo_id, readme_version, run_id)
    ), old AS (
        SELECT r.repo_id, r.tag_ids, r.backend, r.model, r.prompt_version, r.taxonomy_version, r.readme_hash,
               r.readme_version, r.raw_output, r.latency_ms, r.tag_scores, r.confidence, r.tagged_at, r.run_id,
               n.readme_version AS new_version, n.run_id AS new_run
        FROM results r JOIN n ON n.repo_id = r.repo_id
        ORDER BY r.repo_id
        FOR UPDATE OF r
    )
    INSERT INTO result_history (repo_id, tag_ids, backend, model, prompt_version, taxonomy_version, readme_hash,
                                readme_version, raw_output, latency_ms, tag_scores, confidence, tagged_at, run_id,
                                replaced_by_run, replaced_reason)
    SELECT repo_id, tag_ids, backend, model, prompt_version, taxonomy_version, readme_hash, readme_version,
           raw_output, latency_ms, tag_scores, confidence, tagged_at, run_id, new_run, 'run'
    FROM old
    WHERE backend <> 'manual' AND readme_version <= new_version
      AND (run_id IS NULL OR new_run IS NULL OR run_id <> new_run)
""")


# Elsewhere (SQLite: the demo), executemany of a statement built once per dialect: building an upsert
# (its EXCLUDED alias and column collections) costs more CPU than executing it for a batch of ids.
@lru_cache(maxsize=8)
def _results_upsert(dialect: str) -> Any:
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(results)
    excluded = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[results.c.repo_id],
        set_={c.name: excluded[c.name] for c in results.columns if c.name != "repo_id"} | {"tagged_at": sa.func.now()},
        where=(results.c.readme_version <= excluded.readme_version) & (results.c.backend != MANUAL),
    )


_HISTORY_COPIED = ("repo_id", "tag_ids", "backend", "model", "prompt_version", "taxonomy_version", "readme_hash",
                   "readme_version", "raw_output", "latency_ms", "tag_scores", "confidence", "tagged_at", "run_id")


def _archive_replaced(conn: Connection, ordered: Sequence[Mapping[str, Any]]) -> None:
    """_ARCHIVE_REPLACED_PG, for SQLite: copy into history the current results that ``ordered`` (new rows,
    in id order) will replace, with the upsert's own conditions."""
    new = {row["repo_id"]: row for row in ordered}
    current = conn.execute(
        sa.select(*(results.c[name] for name in _HISTORY_COPIED))
        .where(results.c.repo_id.in_(list(new)))
        .order_by(results.c.repo_id)
        .with_for_update()
    ).mappings().all()
    replaced = [
        dict(old) | {"replaced_by_run": new[old["repo_id"]]["run_id"], "replaced_reason": "run"}
        for old in current
        if old["backend"] != MANUAL
        and old["readme_version"] <= new[old["repo_id"]]["readme_version"]
        and (old["run_id"] is None or old["run_id"] != new[old["repo_id"]]["run_id"])
    ]
    if replaced:
        conn.execute(sa.insert(result_history), replaced)


def upsert_jobs(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write job states: each row has repo_id, state, attempts, queued_at, last_error, task_id.

    Ids not in the index are skipped (their job is the dead letter alone).
    """
    if not rows:
        return
    stmt = _insert(conn, jobs)
    excluded = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=[jobs.c.repo_id],
        set_={
            "state": excluded.state,
            "attempts": excluded.attempts,
            "queued_at": excluded.queued_at,
            "last_error": excluded.last_error,
            "task_id": excluded.task_id,
            "updated_at": sa.func.now(),
        },
    )
    known = existing_repo_ids(conn, [r["repo_id"] for r in rows])
    values = sorted((dict(r) for r in rows if r["repo_id"] in known), key=lambda r: r["repo_id"])
    if values:
        conn.execute(stmt, values)


def mark_done(conn: Connection, ids: Sequence[str], task_id: str | None) -> None:
    if not ids:
        return
    now = utcnow()
    if conn.dialect.name == "postgresql":
        conn.execute(_DONE_UPSERT_PG, {"ids": sorted(ids), "now": now, "task_id": task_id})
        return
    conn.execute(
        _done_upsert(conn.dialect.name),
        [{"repo_id": i, "state": "done", "attempts": 0, "queued_at": now, "task_id": task_id} for i in sorted(ids)],
    )


_DONE_UPSERT_PG = sa.text("""
    INSERT INTO jobs (repo_id, state, attempts, queued_at, task_id)
    SELECT repo_id, 'done', 0, :now, :task_id FROM unnest(CAST(:ids AS text[])) AS repo_id
    ON CONFLICT (repo_id) DO UPDATE SET
        state = 'done', attempts = 0, last_error = NULL, task_id = excluded.task_id, updated_at = now()
""")


@lru_cache(maxsize=8)
def _done_upsert(dialect: str) -> Any:
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(jobs)
    return stmt.on_conflict_do_update(
        index_elements=[jobs.c.repo_id],
        set_={"state": "done", "attempts": 0, "last_error": None, "task_id": stmt.excluded.task_id,
              "updated_at": sa.func.now()},
    )


def mark_queued(
    conn: Connection, ids: Sequence[str], *, reset_attempts: bool = True, run_id: int | None = None
) -> None:
    """Record that ``ids`` were sent to the queue now (the sweeper measures from this time), by ``run_id``."""
    if not ids:
        return
    now = utcnow()
    if conn.dialect.name == "postgresql":
        conn.execute(_QUEUED_UPSERT_PG[reset_attempts], {"ids": sorted(set(ids)), "now": now, "run_id": run_id})
        return
    conn.execute(_queued_upsert(conn.dialect.name, reset_attempts),
                 [{"repo_id": i, "state": "queued", "attempts": 0, "queued_at": now, "run_id": run_id}
                  for i in sorted(set(ids))])


_QUEUED_UPSERT_PG = {
    reset: sa.text(f"""
        INSERT INTO jobs (repo_id, state, attempts, queued_at, run_id)
        SELECT repo_id, 'queued', 0, :now, CAST(:run_id AS int) FROM unnest(CAST(:ids AS text[])) AS repo_id
        ON CONFLICT (repo_id) DO UPDATE SET
            state = 'queued', queued_at = excluded.queued_at, updated_at = now(), run_id = excluded.run_id
            {", attempts = 0" if reset else ""}
    """)
    for reset in (True, False)
}


@lru_cache(maxsize=8)
def _queued_upsert(dialect: str, reset_attempts: bool) -> Any:
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(jobs)
    set_: dict[str, Any] = {"state": "queued", "queued_at": stmt.excluded.queued_at, "updated_at": sa.func.now(),
                            "run_id": stmt.excluded.run_id}
    if reset_attempts:
        set_["attempts"] = 0
    return stmt.on_conflict_do_update(index_elements=[jobs.c.repo_id], set_=set_)


def job_attempts(conn: Connection, ids: Sequence[str]) -> dict[str, int]:
    """Failed attempts so far per repo: the retry policy's input, kept in Postgres to survive redelivery."""
    rows = conn.execute(sa.select(jobs.c.repo_id, jobs.c.attempts).where(jobs.c.repo_id.in_(list(ids))))
    return {repo_id: attempts for repo_id, attempts in rows}


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


def record_dead_letters(conn: Connection, letters: Sequence[Mapping[str, Any]], task_id: str | None) -> None:
    """Dead-letter repos (repo_id, error_class, message, attempts); their job state becomes dead."""
    if not letters:
        return
    now = utcnow()
    rows = sorted(
        ({"repo_id": d["repo_id"], "error_class": d["error_class"], "message": d["message"][:4000],
          "attempts": d["attempts"], "task_id": task_id, "first_failed_at": now, "last_failed_at": now}
         for d in letters),
        key=lambda r: r["repo_id"],
    )
    stmt = _insert(conn, dead_letters)
    stmt = stmt.on_conflict_do_update(
        index_elements=[dead_letters.c.repo_id],
        set_={k: stmt.excluded[k] for k in ("error_class", "message", "attempts", "task_id", "last_failed_at")},
    )
    conn.execute(stmt, rows)
    upsert_jobs(
        conn,
        [{"repo_id": r["repo_id"], "state": "dead", "attempts": r["attempts"], "queued_at": now,
          "last_error": r["message"][:2000], "task_id": task_id} for r in rows],
    )


def delete_dead_letters(conn: Connection, ids: Sequence[str]) -> int:
    if not ids:
        return 0
    return conn.execute(sa.delete(dead_letters).where(dead_letters.c.repo_id.in_(list(ids)))).rowcount


def claim_stuck_jobs(conn: Connection, older_than_s: float, limit: int) -> list[str]:
    """Repos queued (or due for a retry) longer than ``older_than_s`` without a result: re-stamp and
    return them for re-enqueueing. SKIP LOCKED lets two sweepers run without sweeping the same repo."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    stuck = (
        sa.select(jobs.c.repo_id)
        .where(jobs.c.state.in_(("queued", "failed")), jobs.c.queued_at < cutoff)
        .order_by(jobs.c.repo_id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(conn.execute(stuck).scalars())
    if ids:
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.repo_id.in_(ids))
            .values(state="queued", queued_at=utcnow(), updated_at=sa.func.now())
        )
    return ids


# --- reading out --------------------------------------------------------------------------------


def status_counts(conn: Connection) -> dict[str, int]:
    """What `tagger status` shows: repos, tagged, dead letters, and repos pending, failed or done."""
    states = job_state_counts(conn)
    return {
        "repos": sum(states.values()),  # every repo is in one state, 'untracked' included
        "tagged": int(conn.execute(sa.select(sa.func.count()).select_from(results)).scalar_one()),
        "dead": int(conn.execute(sa.select(sa.func.count()).select_from(dead_letters)).scalar_one()),
        "pending": states["queued"],
        "failed": states["failed"],
        "done": states["done"],
    }


def tag_rate(conn: Connection, window_s: int = 60) -> float:
    """Results written per second over the last ``window_s`` seconds."""
    since = utcnow() - timedelta(seconds=window_s)
    n = conn.execute(sa.select(sa.func.count()).select_from(results).where(results.c.tagged_at >= since)).scalar_one()
    return n / window_s


def iter_results(conn: Connection, page: int = 5000) -> Iterator[tuple[str, list[int]]]:
    """(repo_id, tag_ids) for every tagged repo, in id order, page by page."""
    for repo_id, tag_ids, _scores in iter_scored_results(conn, page):
        yield repo_id, tag_ids


def iter_scored_results(conn: Connection, page: int = 5000) -> Iterator[tuple[str, list[int], list[float] | None]]:
    """(repo_id, tag_ids, tag_scores or None) for every tagged repo, in id order, page by page."""
    after = ""
    while True:
        rows = conn.execute(
            sa.select(results.c.repo_id, results.c.tag_ids, results.c.tag_scores)
            .where(results.c.repo_id > after)
            .order_by(results.c.repo_id)
            .limit(page)
        ).all()
        if not rows:
            return
        for repo_id, tag_ids, tag_scores in rows:
            yield repo_id, list(tag_ids), None if tag_scores is None else [float(s) for s in tag_scores]
        after = rows[-1][0]


def least_confident_results(conn: Connection, limit: int) -> list[dict[str, Any]]:
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
    return [dict(row._mapping) for row in conn.execute(query)]


def outdated_result_ids(conn: Connection) -> set[str]:
    """Repos whose result was computed from another README than their current one."""
    query = sa.select(results.c.repo_id).join(repos, repos.c.id == results.c.repo_id).where(
        results.c.readme_hash != repos.c.readme_hash
    )
    return set(conn.execute(query).scalars())


def list_dead_letters(conn: Connection, limit: int | None = None) -> list[dict[str, Any]]:
    query = sa.select(dead_letters).order_by(dead_letters.c.last_failed_at.desc(), dead_letters.c.repo_id)
    if limit:
        query = query.limit(limit)
    return [dict(row) for row in conn.execute(query).mappings()]


def get_dead_letter(conn: Connection, repo_id: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(dead_letters).where(dead_letters.c.repo_id == repo_id)).mappings().first()
    return dict(row) if row else None


def dead_letter_ids(conn: Connection) -> list[str]:
    return list(conn.execute(sa.select(dead_letters.c.repo_id).order_by(dead_letters.c.repo_id)).scalars())


def purge_dead_letters(conn: Connection, before: datetime) -> int:
    return conn.execute(sa.delete(dead_letters).where(dead_letters.c.last_failed_at < before)).rowcount


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


# --- operations: locks and monitoring -------------------------------------------------------------


def try_advisory_lock(conn: Connection, key: int) -> bool:
    """Take the session-level advisory lock ``key`` if free (PostgreSQL; SQLite has one process: True)."""
    if conn.dialect.name != "postgresql":
        return True
    return bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar())


def advisory_lock(conn: Connection, key: int) -> None:
    """Wait for, then take, the session-level advisory lock ``key``."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_lock(key)))


def advisory_xact_lock(conn: Connection, key: int) -> None:
    """Wait for, then take, the advisory lock ``key`` until the end of this transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))


def advisory_unlock(conn: Connection, key: int) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))


def job_state_counts(conn: Connection) -> dict[str, int]:
    """Repos per job state (every state present, zero when none), plus 'untracked': never enqueued."""
    rows = conn.execute(sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)).all()
    by_state: dict[str, int] = {state: int(n) for state, n in rows}
    counts = {state: by_state.get(state, 0) for state in JOB_STATES}
    total = conn.execute(sa.select(sa.func.count()).select_from(repos)).scalar_one()
    counts["untracked"] = max(0, int(total) - sum(counts.values()))
    return counts


def repo_outcomes(conn: Connection, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Per repo (in id order): name, job state, result (tag_ids, latency_ms) and dead letter, if any."""
    query = (
        sa.select(
            repos.c.id,
            repos.c.name,
            jobs.c.state,
            results.c.tag_ids,
            results.c.latency_ms,
            dead_letters.c.error_class,
            dead_letters.c.message,
        )
        .outerjoin(jobs, jobs.c.repo_id == repos.c.id)
        .outerjoin(results, results.c.repo_id == repos.c.id)
        .outerjoin(dead_letters, dead_letters.c.repo_id == repos.c.id)
        .where(repos.c.id.in_(list(ids)))
        .order_by(repos.c.id)
    )
    return [dict(row) for row in conn.execute(query).mappings()]


# --- runs ------------------------------------------------------------------------------------------


def create_run(conn: Connection, *, kind: str, started_by: str, label: str | None, selection: str,
               configuration: Mapping[str, Any]) -> int:
    """Record a run (``configuration``: backend, model, prompt_version, taxonomy_version); its id."""
    values = {k: configuration[k] for k in ("backend", "model", "prompt_version", "taxonomy_version")}
    return int(conn.execute(
        sa.insert(runs).values(kind=kind, started_by=started_by, label=label, selection=selection, **values)
        .returning(runs.c.id)
    ).scalar_one())


def add_run_enqueued(conn: Connection, run_id: int, n: int) -> None:
    # A non-key update: it does not wait for the workers' key-share locks on the run (lock_run_for_write).
    conn.execute(sa.update(runs).where(runs.c.id == run_id).values(enqueued=runs.c.enqueued + n))


def get_run(conn: Connection, run_id: int) -> dict[str, Any] | None:
    row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
    return dict(row) if row else None


def list_runs(conn: Connection, limit: int) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sa.select(runs).order_by(runs.c.id.desc()).limit(limit)).mappings()]


def lock_run_for_write(conn: Connection, run_id: int) -> dict[str, Any] | None:
    """A worker's write of run ``run_id``: a key-share lock on the run until the write commits, so a
    rollback or promote (lock_run) waits for the writes in flight, and every later write sees its mark."""
    row = conn.execute(
        sa.select(runs.c.id, runs.c.kind, runs.c.rolled_back_at).where(runs.c.id == run_id)
        .with_for_update(read=True, key_share=True)
    ).mappings().first()
    return dict(row) if row else None


def lock_run(conn: Connection, run_id: int) -> dict[str, Any] | None:
    """Rollback and promote: the run row, exclusively, once every write of the run in flight is in."""
    row = conn.execute(sa.select(runs).where(runs.c.id == run_id).with_for_update()).mappings().first()
    return dict(row) if row else None


def run_counts(conn: Connection, run: Mapping[str, Any]) -> dict[str, int]:
    """Progress of a run. Live: its repos by job state (while this run is the last to enqueue them),
    results it wrote that are still current, and those replaced since. Canary: its sample by state."""
    run_id = run["id"]
    if run["kind"] == "canary":
        rows = conn.execute(sa.select(shadow_results.c.state, sa.func.count()).where(shadow_results.c.run_id == run_id)
                            .group_by(shadow_results.c.state)).all()
        by_state = {state: int(n) for state, n in rows}
        promoted = conn.execute(sa.select(sa.func.count()).select_from(shadow_results).where(
            shadow_results.c.run_id == run_id, shadow_results.c.promoted_at.is_not(None))).scalar_one()
        return {"sample": sum(by_state.values()), **{s: by_state.get(s, 0) for s in JOB_STATES},
                "promoted": int(promoted)}
    rows = conn.execute(sa.select(jobs.c.state, sa.func.count()).where(jobs.c.run_id == run_id)
                        .group_by(jobs.c.state)).all()
    by_state = {state: int(n) for state, n in rows}
    current = conn.execute(
        sa.select(sa.func.count()).select_from(results).where(results.c.run_id == run_id)).scalar_one()
    replaced = conn.execute(sa.select(sa.func.count(sa.distinct(result_history.c.repo_id))).where(
        result_history.c.run_id == run_id)).scalar_one()
    return {"enqueued": int(run["enqueued"]), **{s: by_state.get(s, 0) for s in JOB_STATES},
            "results_current": int(current), "results_replaced_since": int(replaced)}


def job_run_ids(conn: Connection, ids: Sequence[str]) -> dict[str, int | None]:
    """The run that last enqueued each repo: what the sweeper re-sends it under."""
    rows = conn.execute(sa.select(jobs.c.repo_id, jobs.c.run_id).where(jobs.c.repo_id.in_(list(ids))))
    return {repo_id: run_id for repo_id, run_id in rows}


# --- manual tags (pins) ----------------------------------------------------------------------------


def get_pin(conn: Connection, repo_id: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(manual_tags).where(manual_tags.c.repo_id == repo_id)).mappings().first()
    return dict(row) if row else None


def _current_result(conn: Connection, repo_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(*(results.c[name] for name in _HISTORY_COPIED)).where(results.c.repo_id == repo_id).with_for_update()
    ).mappings().first()
    return dict(row) if row else None


def _archive(conn: Connection, row: Mapping[str, Any], reason: str, by_run: int | None = None) -> None:
    conn.execute(sa.insert(result_history).values(**row, replaced_by_run=by_run, replaced_reason=reason))


def pin_tags(conn: Connection, repo_id: str, tag_ids: Sequence[int], *, set_by: str, note: str,
             taxonomy_version: int) -> None:
    """Pin ``tag_ids`` on a repo: the live result becomes them (backend 'manual', which the write step
    never replaces), the replaced result goes to history, who/when/note are kept."""
    repo = conn.execute(sa.select(repos.c.readme_hash, repos.c.readme_version).where(repos.c.id == repo_id)).one()
    old = _current_result(conn, repo_id)
    if old is not None:
        _archive(conn, old, MANUAL)
    values = {"tag_ids": list(tag_ids), "backend": MANUAL, "model": set_by, "prompt_version": MANUAL,
              "taxonomy_version": taxonomy_version, "readme_hash": repo.readme_hash,
              "readme_version": repo.readme_version, "raw_output": note, "latency_ms": 0.0, "tag_scores": None,
              "confidence": None, "run_id": None}
    stmt = _insert(conn, results).values(repo_id=repo_id, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[results.c.repo_id],
                                            set_=values | {"tagged_at": sa.func.now()}))
    pin = _insert(conn, manual_tags).values(repo_id=repo_id, tag_ids=list(tag_ids), set_by=set_by, note=note)
    conn.execute(pin.on_conflict_do_update(
        index_elements=[manual_tags.c.repo_id],
        set_={"tag_ids": list(tag_ids), "set_by": set_by, "note": note, "set_at": sa.func.now()}))


def unpin_tags(conn: Connection, repo_id: str) -> dict[str, Any] | None:
    """Release a pin: the newest machine result before it comes back (or none: the repo is untagged
    again, and the next refresh tags it). The released pin, or None when there was none."""
    pin = conn.execute(sa.delete(manual_tags).where(manual_tags.c.repo_id == repo_id)
                       .returning(*manual_tags.c)).mappings().first()
    if pin is None:
        return None
    old = _current_result(conn, repo_id)
    if old is not None and old["backend"] == MANUAL:
        _archive(conn, old, "unpin")
        previous = conn.execute(
            sa.select(*(result_history.c[name] for name in _HISTORY_COPIED))
            .where(result_history.c.repo_id == repo_id, result_history.c.backend != MANUAL)
            .order_by(result_history.c.id.desc()).limit(1)
        ).mappings().first()
        _restore(conn, repo_id, dict(previous) if previous else None)
    return dict(pin)


def _restore(conn: Connection, repo_id: str, version: Mapping[str, Any] | None) -> None:
    """Make ``version`` (a history row) the live result again; None: no result."""
    if version is None:
        conn.execute(sa.delete(results).where(results.c.repo_id == repo_id))
        return
    values = {k: v for k, v in version.items() if k != "repo_id"}
    conn.execute(sa.update(results).where(results.c.repo_id == repo_id).values(**values))


def result_versions(conn: Connection, repo_id: str) -> list[dict[str, Any]]:
    """A repo's versions, newest first: the live one (``replaced_reason`` None), then history."""
    current = conn.execute(sa.select(*(results.c[name] for name in _HISTORY_COPIED))
                           .where(results.c.repo_id == repo_id)).mappings().first()
    older = conn.execute(
        sa.select(result_history).where(result_history.c.repo_id == repo_id).order_by(result_history.c.id.desc())
    ).mappings().all()
    versions = [dict(current) | {"replaced_at": None, "replaced_by_run": None, "replaced_reason": None}] if current \
        else []
    return versions + [dict(row) for row in older]


def repo_exists(conn: Connection, repo_id: str) -> bool:
    return conn.execute(sa.select(repos.c.id).where(repos.c.id == repo_id)).first() is not None


# --- rollback and promote --------------------------------------------------------------------------


@dataclass
class RollbackReport:
    restored: list[str] = field(default_factory=list)  # the version before the run is live again
    removed: list[str] = field(default_factory=list)  # the run tagged them first: untagged again
    changed_since: list[str] = field(default_factory=list)  # replaced after the run: not touched
    pinned: list[str] = field(default_factory=list)  # tags pinned by hand since: not touched


def rollback_run(conn: Connection, run_id: int) -> RollbackReport:
    """For every repo run ``run_id`` wrote, restore the version before it, except repos changed since or
    pinned. Marks the run rolled back first (with the run row locked: the run's writes in flight are in,
    and its later writes are dropped by the workers). In the caller's transaction: all or nothing."""
    conn.execute(sa.update(runs).where(runs.c.id == run_id)
                 .values(rolled_back_at=sa.func.coalesce(runs.c.rolled_back_at, sa.func.now())))
    report = RollbackReport()
    mine = [dict(row) for row in conn.execute(
        sa.select(*(results.c[name] for name in _HISTORY_COPIED)).where(results.c.run_id == run_id)
        .order_by(results.c.repo_id).with_for_update()
    ).mappings()]
    before: dict[str, dict[str, Any]] = {}
    ids = [row["repo_id"] for row in mine]
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        for row in conn.execute(
            sa.select(*(result_history.c[name] for name in _HISTORY_COPIED))
            .where(result_history.c.replaced_by_run == run_id, result_history.c.repo_id.in_(chunk))
            .order_by(result_history.c.id)
        ).mappings():
            before.setdefault(row["repo_id"], dict(row))  # the first: what the run replaced
    for version in mine:
        _archive(conn, version, "rollback")
        _restore(conn, version["repo_id"], before.get(version["repo_id"]))
        (report.restored if version["repo_id"] in before else report.removed).append(version["repo_id"])
    gone = conn.execute(
        sa.select(result_history.c.repo_id, manual_tags.c.repo_id.is_not(None))
        .outerjoin(manual_tags, manual_tags.c.repo_id == result_history.c.repo_id)
        .where(result_history.c.run_id == run_id, result_history.c.replaced_reason != "rollback")
        .distinct().order_by(result_history.c.repo_id)
    ).all()
    touched = set(ids)
    for repo_id, pinned in gone:
        if repo_id not in touched:
            (report.pinned if pinned else report.changed_since).append(repo_id)
    return report


# --- canary (shadow results) -----------------------------------------------------------------------


def insert_shadow_queued(conn: Connection, run_id: int, ids: Sequence[str]) -> None:
    if ids:
        conn.execute(sa.insert(shadow_results),
                     [{"run_id": run_id, "repo_id": i, "state": "queued"} for i in sorted(ids)])


def claim_stuck_shadow(conn: Connection, run_id: int, older_than_s: float, limit: int) -> list[str]:
    """A canary's repos queued (or failed, awaiting a retry) longer than ``older_than_s``: re-stamp and
    return them for re-sending (their message was lost), like claim_stuck_jobs for live repos."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    ids = list(conn.execute(
        sa.select(shadow_results.c.repo_id)
        .where(shadow_results.c.run_id == run_id, shadow_results.c.state.in_(("queued", "failed")),
               shadow_results.c.updated_at < cutoff)
        .order_by(shadow_results.c.repo_id).limit(limit).with_for_update(skip_locked=True)
    ).scalars())
    if ids:
        conn.execute(sa.update(shadow_results).where(shadow_results.c.run_id == run_id,
                                                     shadow_results.c.repo_id.in_(ids))
                     .values(state="queued", updated_at=sa.func.now()))
    return ids


def shadow_attempts(conn: Connection, run_id: int, ids: Sequence[str]) -> dict[str, int]:
    rows = conn.execute(sa.select(shadow_results.c.repo_id, shadow_results.c.attempts).where(
        shadow_results.c.run_id == run_id, shadow_results.c.repo_id.in_(list(ids))))
    return {repo_id: attempts for repo_id, attempts in rows}


def write_shadow_results(conn: Connection, run_id: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """A canary's outcomes: result rows (state done, configuration, tag_ids...), or failures (state
    failed or dead, attempts, error). Only the run's own rows are written: never a live table."""
    for row in sorted(rows, key=lambda r: r["repo_id"]):
        query = sa.update(shadow_results).where(shadow_results.c.run_id == run_id,
                                                shadow_results.c.repo_id == row["repo_id"])
        if row["state"] != "done":  # a redelivered copy that failed never undoes a result
            query = query.where(shadow_results.c.state != "done")
        conn.execute(query.values(**{k: v for k, v in row.items() if k != "repo_id"}, updated_at=sa.func.now()))


def shadow_against_live(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    """Each repo of a canary's sample: its name, state, shadow tags, live tags (None: untagged) and
    whether it is pinned, in id order."""
    query = (
        sa.select(shadow_results.c.repo_id, repos.c.name, shadow_results.c.state,
                  shadow_results.c.tag_ids.label("shadow"), results.c.tag_ids.label("live"),
                  (results.c.backend == MANUAL).label("pinned"))
        .join(repos, repos.c.id == shadow_results.c.repo_id)
        .outerjoin(results, results.c.repo_id == shadow_results.c.repo_id)
        .where(shadow_results.c.run_id == run_id)
        .order_by(shadow_results.c.repo_id)
    )
    return [dict(row) for row in conn.execute(query).mappings()]


def promotable_shadow_results(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    """A canary's results not promoted yet, as result rows for upsert_results."""
    columns = ("repo_id", "tag_ids", "backend", "model", "prompt_version", "taxonomy_version", "readme_hash",
               "readme_version", "raw_output", "latency_ms", "tag_scores", "confidence")
    rows = conn.execute(
        sa.select(*(shadow_results.c[c] for c in columns)).where(
            shadow_results.c.run_id == run_id, shadow_results.c.state == "done",
            shadow_results.c.promoted_at.is_(None)).order_by(shadow_results.c.repo_id)
    ).mappings()
    return [dict(row) | {"run_id": run_id} for row in rows]


def mark_promoted(conn: Connection, run_id: int, ids: Sequence[str]) -> None:
    for start in range(0, len(ids), 5000):
        conn.execute(sa.update(shadow_results).where(shadow_results.c.run_id == run_id,
                                                     shadow_results.c.repo_id.in_(list(ids[start : start + 5000])))
                     .values(promoted_at=sa.func.now()))
    conn.execute(sa.update(runs).where(runs.c.id == run_id).values(promoted_at=sa.func.now()))


def results_of_run(conn: Connection, run_id: int, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` hold a live result written by run ``run_id``."""
    found: set[str] = set()
    for start in range(0, len(ids), 5000):
        found |= set(conn.execute(sa.select(results.c.repo_id).where(
            results.c.run_id == run_id, results.c.repo_id.in_(list(ids[start : start + 5000])))).scalars())
    return found


def iter_export(conn: Connection, page: int = 5000) -> Iterator[tuple[str, list[int], list[float] | None, bool]]:
    """(repo_id, tag_ids, tag_scores or None, pinned by hand) for every tagged repo, in id order, page by page."""
    after = ""
    while True:
        rows = conn.execute(
            sa.select(results.c.repo_id, results.c.tag_ids, results.c.tag_scores, results.c.backend == MANUAL)
            .where(results.c.repo_id > after).order_by(results.c.repo_id).limit(page)
        ).all()
        if not rows:
            return
        for repo_id, tag_ids, tag_scores, pinned in rows:
            yield (repo_id, list(tag_ids), None if tag_scores is None else [float(s) for s in tag_scores],
                   bool(pinned))
        after = rows[-1][0]
