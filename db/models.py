"""The schema (PostgreSQL). Alembic migrations must match it (tests/integration/test_migrations.py checks).

A result is declared once (:data:`RESULT_FIELDS`): ``results``, ``result_history`` and
``shadow_results`` are built from it, and so is every statement that writes or copies one
(db/results.py). Adding a field to a result is one line here, a migration, and the code computing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    REAL,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Timestamp = DateTime(timezone=True)
# Native arrays, chosen by measurement over JSONB (BENCHMARKS.md, "The result's column types"): at 200k
# results, inserts 15-30% faster on the server, the table 3% smaller, and `&&` answers "tagged with any
# of" directly. int, not smallint: tag ids are the user's (tags.id), any non-negative integer. real (7
# significant digits) is plenty for a calibrated probability, and 4 bytes a score smaller than JSONB.
TagIds = ARRAY(Integer)
Scores = ARRAY(REAL)

JOB_STATES = ("queued", "done", "failed", "dead")
RUN_KINDS = ("live", "canary")
MANUAL = "manual"  # results.backend of a repo whose tags a person pinned

metadata = MetaData(naming_convention=NAMING)


@dataclass(frozen=True, slots=True)
class ResultField:
    name: str
    type: Any
    nullable: bool = False
    # How the field travels in a multi-row write (one array per column, unnest()ed by the server): the
    # SQL array type of its parameter, and the cast back to the column's type. An array-valued field
    # travels as its text literal ('{4,17}'): a 2-D parameter could not hold arrays of different lengths.
    array: str = "text[]"
    cast: str = ""

    @property
    def is_array(self) -> bool:
        return isinstance(self.type, ARRAY)


# A stored result: its tags and what computed them from which README. The configuration (backend,
# model, prompt_version, taxonomy_version) is db.configuration.CONFIGURATION_FIELDS, spelled here too.
RESULT_FIELDS: tuple[ResultField, ...] = (
    ResultField("tag_ids", TagIds, cast="::int[]"),
    ResultField("backend", Text()),
    ResultField("model", Text()),
    ResultField("prompt_version", Text()),
    ResultField("taxonomy_version", Integer(), array="int[]"),
    ResultField("readme_hash", Text()),
    ResultField("readme_version", Integer(), array="int[]"),
    ResultField("raw_output", Text()),
    ResultField("latency_ms", Float(), array="float8[]"),
    # The confidence of each tag, in tag_ids' order (tagger/scoring.py); NULL where the backend's answer
    # was taken as is (keyword, embedding, your own backends).
    ResultField("tag_scores", Scores, nullable=True, cast="::real[]"),
    # The best tag's confidence: how sure the result is as a whole (`tagger review` sorts on it).
    ResultField("confidence", Float(), nullable=True, array="float8[]"),
)
RESULT_NAMES = tuple(f.name for f in RESULT_FIELDS)
# A result on its way to be written: ``repo_id``, a value per RESULT_FIELDS name, and ``run_id`` (optional).
# A mapping, not a class: its keys are the declaration's, so a new field needs no edit here.
ResultRow = dict[str, Any]


def result_columns(*, optional: bool = False) -> list[Column[Any]]:
    """The result's columns for one table; ``optional``: all nullable (a canary's queued repos have none)."""
    return [Column(f.name, f.type, nullable=optional or f.nullable) for f in RESULT_FIELDS]


def _repo_key(*, primary_key: bool = True, foreign_key: bool = True) -> Column[str]:
    if not foreign_key:
        return Column("repo_id", Text, primary_key=primary_key, nullable=False)
    return Column("repo_id", Text, ForeignKey("repos.id", ondelete="CASCADE"), primary_key=primary_key,
                  nullable=False)


tags = Table(
    "tags", metadata,  # the current taxonomy: ids are the user's, never renumbered
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", Text, unique=True, nullable=False),
    Column("description", Text, server_default="", nullable=False),
)

taxonomy_versions = Table(
    "taxonomy_versions", metadata,
    Column("version", Integer, primary_key=True, autoincrement=True),
    Column("content_hash", Text, unique=True, nullable=False),
    Column("source", Text, nullable=False),
    Column("loaded_at", Timestamp, server_default=func.now(), nullable=False),
)

repos = Table(
    "repos", metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, server_default="", nullable=False),
    Column("readme", Text, nullable=False),
    Column("readme_hash", Text, nullable=False),
    # The README's size as imported, in bytes, when `tagger import` stored only its head (longer than
    # TAGGER_README_MAX_BYTES); null when it was stored whole.
    Column("readme_size", BigInteger, nullable=True),
    # Bumped whenever the README's hash changes: orders results computed from different READMEs.
    Column("readme_version", Integer, server_default="1", nullable=False),
    Column("created_at", Timestamp, server_default=func.now(), nullable=False),
    Column("updated_at", Timestamp, server_default=func.now(), nullable=False),
)

results = Table(
    "results", metadata,
    _repo_key(),
    *result_columns(),
    Column("tagged_at", Timestamp, server_default=func.now(), nullable=False),
    # The run whose write this is (None: written before runs existed, or pinned by hand). No foreign key:
    # a check per written row (a trigger) measurably slowed the hot path; workers check the run once
    # per batch (workers.batch.process_batch).
    Column("run_id", Integer, nullable=True),
    # When the repo's live tags last changed by any write (a run, a promote, a pin, an unpin, a rollback's
    # restore): what `tagger export --changed-since` and the tag rate read, through its index. tagged_at
    # is when the result was computed, and a restored version keeps its own.
    Column("changed_at", Timestamp, server_default=func.now(), nullable=False, index=True),
    Index("ix_results_confidence", "confidence"),
    # A run's rows, and its first and last result as two probes (db.progress).
    Index("ix_results_run_id_tagged_at", "run_id", "tagged_at"),
)

# A result as a version: what history keeps, rollback restores and `tagger history` shows.
VERSION_NAMES = ("repo_id", *RESULT_NAMES, "tagged_at", "run_id")

result_history = Table(
    "result_history", metadata,  # a result as it was before a run, a pin, an unpin or a rollback replaced it
    Column("id", Integer, primary_key=True, autoincrement=True),
    # No foreign key: its check was a query per archived version, most of a whole-index rollback's
    # archive. Every version is copied from a live result (whose own key holds the repo) in the same
    # transaction; a deleted repo's history goes with it by a statement-level trigger (migration 0008).
    _repo_key(primary_key=False, foreign_key=False),
    *result_columns(),
    Column("tagged_at", Timestamp, nullable=False),
    Column("run_id", Integer, nullable=True),
    Column("replaced_at", Timestamp, server_default=func.now(), nullable=False),
    # What replaced it: run N's write, or "manual", "unpin", "rollback" (no run: not in the index).
    Column("replaced_by_run", Integer, nullable=True),
    Column("replaced_reason", Text, nullable=False),
    Index("ix_result_history_repo_id_id", "repo_id", "id"),
    Index("ix_result_history_replaced_by_run", "replaced_by_run", postgresql_where=text("replaced_by_run IS NOT NULL")),
    # A result removed (unpinned to nothing, rolled back to untagged) is archived then deleted: its
    # archive's time is the removal's, which `tagger export --changed-since` reads through this index.
    Index("ix_result_history_replaced_at", "replaced_at"),
    Index("ix_result_history_run_id_tagged_at", "run_id", "tagged_at"),
)

jobs = Table(
    "jobs", metadata,  # each repo's job state: Postgres is the source of truth; the queue only a transport
    _repo_key(),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, server_default="0", nullable=False),
    # When the repo is due on a worker: enqueue time, or the time a planned retry comes due.
    Column("queued_at", Timestamp, server_default=func.now(), nullable=False),
    Column("updated_at", Timestamp, server_default=func.now(), nullable=False),
    Column("last_error", Text, nullable=True),
    Column("task_id", Text, nullable=True),
    # The run that last enqueued the repo: what the sweeper re-sends it under. No foreign key: the hot
    # path's job writes stay free of a check per row.
    Column("run_id", Integer, nullable=True),
    CheckConstraint("state IN ('queued', 'done', 'failed', 'dead')", name="state"),
    Index("ix_jobs_state_queued_at", "state", "queued_at"),
)

dead_letters = Table(
    "dead_letters", metadata,  # no foreign key: an id that is not in the index is dead-lettered too
    Column("repo_id", Text, primary_key=True),
    Column("error_class", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("first_failed_at", Timestamp, server_default=func.now(), nullable=False),
    Column("last_failed_at", Timestamp, server_default=func.now(), nullable=False),
    Column("task_id", Text, nullable=True),
)

runs = Table(
    "runs", metadata,  # work started by an enqueue (live) or a canary (shadow results only)
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", Text, nullable=False),
    Column("started_at", Timestamp, server_default=func.now(), nullable=False),
    Column("started_by", Text, nullable=False),
    Column("label", Text, nullable=True),
    Column("backend", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("prompt_version", Text, nullable=False),
    Column("taxonomy_version", Integer, nullable=True),
    Column("selection", Text, nullable=False),
    # Repos sent so far; the rest of a run's counts are kept in row_counts (db.counts).
    Column("enqueued", Integer, server_default="0", nullable=False),
    # When its producer finished sending (None: still sending, or killed while it was).
    Column("sent_at", Timestamp, nullable=True),
    Column("promoted_at", Timestamp, nullable=True),
    Column("rolled_back_at", Timestamp, nullable=True),
    CheckConstraint("kind IN ('live', 'canary')", name="kind"),
)

manual_tags = Table(
    "manual_tags", metadata,  # tags a person pinned: no run, refresh, sweep or promote overwrites them
    _repo_key(),
    Column("tag_ids", TagIds, nullable=False),
    Column("set_by", Text, nullable=False),
    Column("set_at", Timestamp, server_default=func.now(), nullable=False),
    Column("note", Text, server_default="", nullable=False),
)

shadow_results = Table(
    "shadow_results", metadata,  # a canary's result per repo of its sample: no live reader sees these
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    _repo_key(),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, server_default="0", nullable=False),
    Column("error", Text, nullable=True),
    *result_columns(optional=True),
    Column("updated_at", Timestamp, server_default=func.now(), nullable=False),
    Column("promoted_at", Timestamp, nullable=True),
    CheckConstraint("state IN ('queued', 'done', 'failed', 'dead')", name="state"),
    # A canary's first and last result as two probes (db.progress); its sweeper's due repos.
    Index("ix_shadow_results_run_id_state_updated_at", "run_id", "state", "updated_at"),
)

# Rows per table (and jobs per state), kept by statement-level triggers (migration 0006_row_counts) so
# that `tagger status` and a metrics scrape read a few rows instead of counting the index; and per run
# (0007_run_counts): repos it tagged, its live results, its jobs per state; a canary's sample per state. Each writing
# statement appends its net change as a row: writers never wait on one another for a counter row, and
# the reader folds the deltas into row_counts (db.counts.table_counts).
row_counts = Table(
    "row_counts", metadata,
    # "repos", "results", "dead_letters", "jobs:<state>"; "run:<id>:tagged", "run:<id>:results",
    # "run:<id>:jobs:<state>", "run:<id>:shadow_results:<state>", "run:<id>:shadow_results:promoted"
    Column("name", Text, primary_key=True),
    Column("n", BigInteger, nullable=False),
)

row_count_deltas = Table(
    "row_count_deltas", metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", Text, nullable=False),
    Column("n", BigInteger, nullable=False),
)

# Runs whose replaced versions `tagger history prune` deleted: their rollback would restore too little
# (a repo without its version before the run would be untagged instead), so it is refused.
pruned_runs = Table(
    "pruned_runs", metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=False),
    Column("versions", BigInteger, nullable=False),  # replaced versions of the run deleted
    Column("pruned_at", Timestamp, server_default=func.now(), nullable=False),
)
