"""A whole index in seconds: repos by COPY, then results, jobs, history, dead letters and a canary's shadow
results derived from them in SQL, set-based. The index benchmark (bench/index.py) and the fleet
(bench/fleet.py) start from it.

It writes the schema's tables directly, so it is the one place that knows their column types:
:func:`load_index` holds every statement; tag ids and scores are written as the database stores them
(JSONB, or native arrays since migration 0003: read off information_schema).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from db.engine import get_engine
from tagger.keywords import phrases_by_tag
from tagger.readme import readme_hash

from . import synthetic_readme

# Tag ids that exist in the bundled taxonomy (19 and 67 do not): results draw theirs from these.
TAG_IDS = tuple(i for i in range(1, 93) if i not in (19, 67))
COPY_CHUNK = 2000  # rows per write to the COPY stream


@dataclass(frozen=True, slots=True)
class IndexShape:
    repos: int
    prefix: str = "r"
    readme_pool: int = 64  # distinct READMEs (each repo's own last line keeps every hash distinct)
    readme_bytes: int = 1500  # each README cut to about this size: a real index's median is a few KB
    canary_every: int = 10  # one repo in this many is in the canary's sample (0: no canary)
    dead_every: int = 1000  # one repo in this many is a dead letter (0: none)


@dataclass(frozen=True, slots=True)
class LoadedIndex:
    repos: int
    old_run: int  # the run whose results the history holds (tagged first)
    live_run: int  # the run that re-tagged every repo: its results are live, run old_run's in history
    canary_run: int | None  # a canary of the live configuration with shadow results done on its sample
    canary_sample: int
    seconds: float

    @property
    def seconds_per_million(self) -> float:
        return self.seconds * 1_000_000 / max(1, self.repos)


def repo_id(prefix: str, i: int) -> str:
    return f"{prefix}{i:08d}"


def readme_pool(shape: IndexShape, seed: int = 7) -> list[str]:
    phrases = sorted({p for ps in phrases_by_tag().values() for p in ps})
    rng = random.Random(seed)
    return [synthetic_readme(rng, phrases)[: shape.readme_bytes] for _ in range(shape.readme_pool)]


def _copy_text(value: str) -> str:
    """``value`` escaped for COPY's text format."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def repo_lines(shape: IndexShape, pool: list[str], start: int = 0) -> Iterator[str]:
    """COPY text lines for repos (id, name, readme, readme_hash), the READMEs cycling over ``pool``."""
    escaped = [_copy_text(text) for text in pool]
    for i in range(start, start + shape.repos):
        rid = repo_id(shape.prefix, i)
        tail = f"\nRepo {rid}.\n"
        k = i % len(pool)
        yield f"{rid}\tbench/{rid}\t{escaped[k]}{_copy_text(tail)}\t{readme_hash(pool[k] + tail)}\n"


def _tag_ids_sql(key: str, arrays: bool) -> str:
    """A result's tag ids (two of TAG_IDS, drawn from the hash of ``key``), as the schema stores them:
    a native array (``arrays``) or JSONB."""
    ids = ",".join(map(str, TAG_IDS))
    first = f"(ARRAY[{ids}])[1 + abs(hashtext({key})) %% {len(TAG_IDS)}]"
    second = f"(ARRAY[{ids}])[1 + abs(hashtext({key} || 'b')) %% {len(TAG_IDS)}]"
    return f"ARRAY[{first}, {second}]" if arrays else f"jsonb_build_array({first}, {second})"


def _tag_scores_sql(key: str, arrays: bool) -> str:
    best = f"round((0.5 + (abs(hashtext({key})) %% 500) / 1000.0)::numeric, 3)"
    return f"ARRAY[{best}, 0.4]::real[]" if arrays else f"jsonb_build_array({best}, 0.4)"


def _native_arrays(cursor: Any) -> bool:
    """Whether results.tag_ids is a native array (the schema since migration 0003) rather than JSONB."""
    cursor.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'results' "
                   "AND column_name = 'tag_ids' AND table_schema = current_schema()")
    row = cursor.fetchone()
    return bool(row) and row[0] == "ARRAY"


def load_index(url: str, shape: IndexShape, current: Mapping[str, object], *, started_by: str = "bench") -> LoadedIndex:
    """Load ``shape.repos`` repos into the (migrated, empty) database at ``url``: every repo tagged by an
    old run, then re-tagged by a live run of ``current``'s configuration (backend, model, prompt_version,
    taxonomy_version), so each has one version in history; jobs done; a few dead letters; and a canary
    with its sample's shadow results done. Returns the runs' ids and the time it took."""
    started = time.perf_counter()
    engine = get_engine(url)
    config = {k: current[k] for k in ("backend", "model", "prompt_version", "taxonomy_version")}
    old = config | {"model": f"{config['model']}-old", "prompt_version": f"{config['prompt_version']}-old"}
    with engine.begin() as conn:
        run_ids = [
            conn.execute(sa.text(
                "INSERT INTO runs (kind, started_by, label, backend, model, prompt_version, taxonomy_version, "
                "selection, enqueued) VALUES (:kind, :by, :label, :backend, :model, :prompt_version, "
                ":taxonomy_version, :selection, :n) RETURNING id"),
                {"kind": kind, "by": started_by, "label": label, "selection": selection, "n": n, **cfg},
            ).scalar_one()
            for kind, label, selection, n, cfg in (
                ("live", "bench: old", "all", shape.repos, old),
                ("live", "bench: live", "all", shape.repos, config),
                ("canary", "bench: canary", "sample", shape.repos // shape.canary_every if shape.canary_every else 0,
                 config | {"model": f"{config['model']}-canary"}),
            )
        ]
    old_run, live_run, canary_run = run_ids
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        assert driver is not None
        with driver.cursor() as cursor:
            with cursor.copy("COPY repos (id, name, readme, readme_hash) FROM STDIN") as copy:
                chunk: list[str] = []
                for line in repo_lines(shape, readme_pool(shape)):
                    chunk.append(line)
                    if len(chunk) >= COPY_CHUNK:
                        copy.write("".join(chunk))
                        chunk = []
                if chunk:
                    copy.write("".join(chunk))
            params: dict[str, object] = {"old_run": old_run, "live_run": live_run, "canary_run": canary_run,
                                         **{f"c_{k}": v for k, v in config.items()},
                                         **{f"o_{k}": v for k, v in old.items()}}
            for statement in _derived_rows(shape, _native_arrays(cursor)):
                cursor.execute(statement, params)
            cursor.execute("SELECT count(*) FROM shadow_results WHERE run_id = %s", (canary_run,))
            row = cursor.fetchone()
            sample = int(row[0]) if row else 0
        driver.commit()
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    return LoadedIndex(shape.repos, old_run, live_run, canary_run if shape.canary_every else None, sample,
                       time.perf_counter() - started)


def _derived_rows(shape: IndexShape, arrays: bool) -> list[str]:
    """The statements that derive results, history, jobs, dead letters and shadow results from the repos."""
    statements = [
        # The old run's versions, replaced by the live run: one version per repo in history.
        f"""INSERT INTO result_history (repo_id, tag_ids, backend, model, prompt_version, taxonomy_version,
                readme_hash, readme_version, raw_output, latency_ms, tag_scores, confidence, tagged_at, run_id,
                replaced_at, replaced_by_run, replaced_reason)
            SELECT id, {_tag_ids_sql("id || 'old'", arrays)}, %(o_backend)s, %(o_model)s, %(o_prompt_version)s,
                   %(o_taxonomy_version)s, readme_hash, 1, '{{"tags": []}}', 5.0,
                   {_tag_scores_sql("id || 'old'", arrays)},
                   0.5, now() - interval '2 days', %(old_run)s, now() - interval '1 day', %(live_run)s, 'run'
            FROM repos""",
        f"""INSERT INTO results (repo_id, tag_ids, backend, model, prompt_version, taxonomy_version, readme_hash,
                readme_version, raw_output, latency_ms, tag_scores, confidence, tagged_at, run_id)
            SELECT id, {_tag_ids_sql("id", arrays)}, %(c_backend)s, %(c_model)s, %(c_prompt_version)s,
                   %(c_taxonomy_version)s, readme_hash, 1, '{{"tags": []}}', 5.0, {_tag_scores_sql("id", arrays)},
                   0.5 + (abs(hashtext(id)) %% 500) / 1000.0, now() - interval '1 day', %(live_run)s
            FROM repos""",
        # The old run's versions went into history directly, never through a write of its own: its
        # "tagged" counter (db.counts) is what its writes would have left.
        """INSERT INTO row_count_deltas (name, n) SELECT 'run:' || %(old_run)s || ':tagged', count(*) FROM repos""",
        """INSERT INTO jobs (repo_id, state, attempts, queued_at, updated_at, task_id, run_id)
            SELECT id, 'done', 0, now() - interval '1 day', now() - interval '1 day', 'bench', %(live_run)s
            FROM repos""",
    ]
    if shape.dead_every:
        statements += [
            f"""INSERT INTO dead_letters (repo_id, error_class, message, attempts, task_id)
                SELECT id, 'MalformedOutput', 'bench: no JSON in the answer', 3, 'bench' FROM repos
                WHERE abs(hashtext(id)) %% {shape.dead_every} = 0""",
            """UPDATE jobs SET state = 'dead', attempts = 3 FROM dead_letters d WHERE d.repo_id = jobs.repo_id""",
        ]
    if shape.canary_every:
        statements.append(
            f"""INSERT INTO shadow_results (run_id, repo_id, state, attempts, tag_ids, backend, model, prompt_version,
                    taxonomy_version, readme_hash, readme_version, raw_output, latency_ms, tag_scores, confidence)
                SELECT %(canary_run)s, id, 'done', 0, {_tag_ids_sql("id || 'canary'", arrays)}, %(c_backend)s,
                       %(c_model)s || '-canary', %(c_prompt_version)s, %(c_taxonomy_version)s, readme_hash, 1,
                       '{{"tags": []}}', 5.0, {_tag_scores_sql("id || 'canary'", arrays)}, 0.7
                FROM repos WHERE abs(hashtext(id)) %% {shape.canary_every} = 0""")
    return statements
