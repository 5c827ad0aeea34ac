"""Every SQL operation of the product, one function each, named after what it does.

Multi-row writes go in ascending ``repo_id`` order, so concurrent workers with overlapping batches
take row locks in the same order and cannot deadlock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from db.models import JOB_STATES, dead_letters, jobs, repos, results, tags, taxonomy_versions
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
    conn.execute(sa.delete(tags).where(tags.c.id.not_in([t.id for t in taxonomy.tags])))
    # Names are unique: clear the ones that move to another id before writing the new rows.
    conn.execute(sa.delete(tags).where(tags.c.name.in_(taxonomy.names)))
    conn.execute(
        sa.insert(tags), [{"id": t.id, "name": t.name, "description": t.description} for t in taxonomy.tags]
    )
    return int(version)


def current_taxonomy_version(conn: Connection) -> int | None:
    return conn.execute(sa.select(sa.func.max(taxonomy_versions.c.version))).scalar()


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
            needs_work = sa.and_(needs_work, settled)
        query = query.where(needs_work)
    return list(conn.execute(query).scalars())


# --- results and job state ----------------------------------------------------------------------


def upsert_results(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Store results; a result never replaces one computed from a newer README. ``tag_scores`` (one per
    tag) and ``confidence`` (the best tag's) are optional: unscored backends have none."""
    if not rows:
        return
    ordered = sorted(({"tag_scores": None, "confidence": None, **row} for row in rows), key=lambda r: r["repo_id"])
    if conn.dialect.name == "postgresql":
        columns = {name: [row[name] for row in ordered] for name in _RESULT_COLUMNS}
        columns["tag_ids"] = [json.dumps(tag_ids) for tag_ids in columns["tag_ids"]]
        columns["tag_scores"] = [None if s is None else json.dumps(s) for s in columns["tag_scores"]]
        conn.execute(_RESULTS_UPSERT_PG, columns)
    else:
        conn.execute(_results_upsert(conn.dialect.name), ordered)


# PostgreSQL gets the hot path's multi-row writes as ONE statement per batch, whatever its size: each
# column travels as one array and unnest() turns the arrays back into rows. The server plans and runs
# one INSERT instead of one per row, and the driver binds a few arrays instead of every value of
# every row (a third less worker CPU per written row than executemany).
_RESULT_COLUMNS = ("repo_id", "tag_ids", "backend", "model", "prompt_version", "taxonomy_version", "readme_hash",
                   "readme_version", "raw_output", "latency_ms", "tag_scores", "confidence")
_RESULTS_UPSERT_PG = sa.text("""
    INSERT INTO results (repo_id, tag_ids, backend, model, prompt_version, taxonomy_version, readme_hash,
                         readme_version, raw_output, latency_ms, tag_scores, confidence, tagged_at)
    SELECT repo_id, tag_ids::jsonb, backend, model, prompt_version, taxonomy_version, readme_hash,
           readme_version, raw_output, latency_ms, tag_scores::jsonb, confidence, now()
    FROM unnest(CAST(:repo_id AS text[]), CAST(:tag_ids AS text[]), CAST(:backend AS text[]),
                CAST(:model AS text[]), CAST(:prompt_version AS text[]), CAST(:taxonomy_version AS int[]),
                CAST(:readme_hash AS text[]), CAST(:readme_version AS int[]), CAST(:raw_output AS text[]),
                CAST(:latency_ms AS float8[]), CAST(:tag_scores AS text[]), CAST(:confidence AS float8[]))
      AS r(repo_id, tag_ids, backend, model, prompt_version, taxonomy_version, readme_hash, readme_version,
           raw_output, latency_ms, tag_scores, confidence)
    ON CONFLICT (repo_id) DO UPDATE SET
        tag_ids = excluded.tag_ids, backend = excluded.backend, model = excluded.model,
        prompt_version = excluded.prompt_version, taxonomy_version = excluded.taxonomy_version,
        readme_hash = excluded.readme_hash, readme_version = excluded.readme_version,
        raw_output = excluded.raw_output, latency_ms = excluded.latency_ms, tag_scores = excluded.tag_scores,
        confidence = excluded.confidence, tagged_at = now()
    WHERE results.readme_version <= excluded.readme_version
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
        where=results.c.readme_version <= excluded.readme_version,
    )


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


def mark_queued(conn: Connection, ids: Sequence[str], *, reset_attempts: bool = True) -> None:
    """Record that ``ids`` were sent to the queue now (the sweeper measures from this time)."""
    if not ids:
        return
    now = utcnow()
    if conn.dialect.name == "postgresql":
        conn.execute(_QUEUED_UPSERT_PG[reset_attempts], {"ids": sorted(set(ids)), "now": now})
        return
    conn.execute(_queued_upsert(conn.dialect.name, reset_attempts),
                 [{"repo_id": i, "state": "queued", "attempts": 0, "queued_at": now} for i in sorted(set(ids))])


_QUEUED_UPSERT_PG = {
    reset: sa.text(f"""
        INSERT INTO jobs (repo_id, state, attempts, queued_at)
        SELECT repo_id, 'queued', 0, :now FROM unnest(CAST(:ids AS text[])) AS repo_id
        ON CONFLICT (repo_id) DO UPDATE SET
            state = 'queued', queued_at = excluded.queued_at, updated_at = now(){", attempts = 0" if reset else ""}
    """)
    for reset in (True, False)
}


@lru_cache(maxsize=8)
def _queued_upsert(dialect: str, reset_attempts: bool) -> Any:
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(jobs)
    set_: dict[str, Any] = {"state": "queued", "queued_at": stmt.excluded.queued_at, "updated_at": sa.func.now()}
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
    after = ""
    while True:
        rows = conn.execute(
            sa.select(results.c.repo_id, results.c.tag_ids)
            .where(results.c.repo_id > after)
            .order_by(results.c.repo_id)
            .limit(page)
        ).all()
        if not rows:
            return
        for repo_id, tag_ids in rows:
            yield repo_id, list(tag_ids)
        after = rows[-1][0]


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
