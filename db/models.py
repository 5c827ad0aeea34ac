"""The schema. Alembic migrations must match it (tests/integration/test_migrations.py checks).

Types are portable (JSON, not ARRAY) so the embedded demo runs the same code on SQLite.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, DateTime, Float, ForeignKey, Index, Integer, MetaData, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JsonType = JSON().with_variant(JSONB(), "postgresql")
Timestamp = DateTime(timezone=True)

JOB_STATES = ("queued", "done", "failed", "dead")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class TagRow(Base):
    """The current taxonomy: ids are the user's, never renumbered."""

    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(Text, unique=True)
    description: Mapped[str] = mapped_column(Text, server_default="")


class TaxonomyVersion(Base):
    __tablename__ = "taxonomy_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    content_hash: Mapped[str] = mapped_column(Text, unique=True)
    source: Mapped[str] = mapped_column(Text)
    loaded_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class Repo(Base):
    __tablename__ = "repos"
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, server_default="")
    readme: Mapped[str] = mapped_column(Text)
    readme_hash: Mapped[str] = mapped_column(Text)
    # Bumped whenever the README's hash changes: orders results computed from different READMEs.
    readme_version: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class Result(Base):
    __tablename__ = "results"
    # `tagger review` lists the least confident results first.
    __table_args__ = (Index("ix_results_confidence", "confidence"),)
    repo_id: Mapped[str] = mapped_column(Text, ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True)
    tag_ids: Mapped[Any] = mapped_column(JsonType)
    backend: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    prompt_version: Mapped[str] = mapped_column(Text)
    taxonomy_version: Mapped[int] = mapped_column(Integer)
    readme_hash: Mapped[str] = mapped_column(Text)
    readme_version: Mapped[int] = mapped_column(Integer)
    raw_output: Mapped[str] = mapped_column(Text)
    latency_ms: Mapped[float] = mapped_column(Float)
    # The confidence of each tag, in tag_ids' order (tagger/scoring.py); NULL where the backend's answer
    # was taken as is (keyword, embedding, your own backends).
    tag_scores: Mapped[Any | None] = mapped_column(JsonType, nullable=True)
    # The best tag's confidence: how sure the result is as a whole.
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    tagged_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    # The run whose write this is (None: written before runs existed, or pinned by hand). No foreign key:
    # a check per written row (a trigger) measurably slowed the hot path; workers check the run once
    # per batch (workers.batch.process_batch).
    run_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)


class Job(Base):
    """Each repo's job state. Postgres is the source of truth; the queue is only a transport."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("state IN ('queued', 'done', 'failed', 'dead')", name="state"),
        Index("ix_jobs_state_queued_at", "state", "queued_at"),
    )
    repo_id: Mapped[str] = mapped_column(Text, ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    # When the repo is due on a worker: enqueue time, or the time a planned retry comes due.
    queued_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    task_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The run that last enqueued the repo: what the sweeper re-sends it under. No foreign key: the hot
    # path's job writes stay free of a check per row.
    run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class DeadLetter(Base):
    """Repos that kept failing. No foreign key: an id that is not in the index is dead-lettered too."""

    __tablename__ = "dead_letters"
    repo_id: Mapped[str] = mapped_column(Text, primary_key=True)
    error_class: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    first_failed_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    last_failed_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    task_id: Mapped[str | None] = mapped_column(Text, nullable=True)


RUN_KINDS = ("live", "canary")
MANUAL = "manual"  # results.backend of a repo whose tags a person pinned


class Run(Base):
    """One piece of tagging work started by an enqueue (live) or a canary (shadow results only)."""

    __tablename__ = "runs"
    __table_args__ = (CheckConstraint("kind IN ('live', 'canary')", name="kind"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    started_by: Mapped[str] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(Text, nullable=True)
    backend: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    prompt_version: Mapped[str] = mapped_column(Text)
    taxonomy_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    selection: Mapped[str] = mapped_column(Text)
    # Repos sent so far; the rest of a run's counts are read off jobs, results and shadow_results.
    enqueued: Mapped[int] = mapped_column(Integer, server_default="0")
    promoted_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    rolled_back_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class ResultHistory(Base):
    """A result as it was before something replaced it: a run, a pin, an unpin, a rollback."""

    __tablename__ = "result_history"
    __table_args__ = (Index("ix_result_history_repo_id_id", "repo_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repo_id: Mapped[str] = mapped_column(Text, ForeignKey("repos.id", ondelete="CASCADE"))
    tag_ids: Mapped[Any] = mapped_column(JsonType)
    backend: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    prompt_version: Mapped[str] = mapped_column(Text)
    taxonomy_version: Mapped[int] = mapped_column(Integer)
    readme_hash: Mapped[str] = mapped_column(Text)
    readme_version: Mapped[int] = mapped_column(Integer)
    raw_output: Mapped[str] = mapped_column(Text)
    latency_ms: Mapped[float] = mapped_column(Float)
    tag_scores: Mapped[Any | None] = mapped_column(JsonType, nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    tagged_at: Mapped[datetime] = mapped_column(Timestamp)
    run_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    replaced_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    # What replaced it: run N's write, or "manual", "unpin", "rollback".
    replaced_by_run: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    replaced_reason: Mapped[str] = mapped_column(Text)


class ManualTag(Base):
    """Tags a person pinned: no run, refresh, sweep or promote overwrites them."""

    __tablename__ = "manual_tags"
    repo_id: Mapped[str] = mapped_column(Text, ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True)
    tag_ids: Mapped[Any] = mapped_column(JsonType)
    set_by: Mapped[str] = mapped_column(Text)
    set_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    note: Mapped[str] = mapped_column(Text, server_default="")


class ShadowResult(Base):
    """A canary's result for one repo of its sample: no reader of live results sees these."""

    __tablename__ = "shadow_results"
    __table_args__ = (CheckConstraint("state IN ('queued', 'done', 'failed', 'dead')", name="state"),)
    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    repo_id: Mapped[str] = mapped_column(Text, ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    tag_ids: Mapped[Any | None] = mapped_column(JsonType, nullable=True)
    backend: Mapped[str | None] = mapped_column(Text, nullable=True)
    model: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt_version: Mapped[str | None] = mapped_column(Text, nullable=True)
    taxonomy_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    readme_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    readme_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    raw_output: Mapped[str | None] = mapped_column(Text, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    tag_scores: Mapped[Any | None] = mapped_column(JsonType, nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    promoted_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


metadata = Base.metadata
# Core tables, for the SQL in db/queries.py.
tags = metadata.tables["tags"]
taxonomy_versions = metadata.tables["taxonomy_versions"]
repos = metadata.tables["repos"]
results = metadata.tables["results"]
jobs = metadata.tables["jobs"]
dead_letters = metadata.tables["dead_letters"]
runs = metadata.tables["runs"]
result_history = metadata.tables["result_history"]
manual_tags = metadata.tables["manual_tags"]
shadow_results = metadata.tables["shadow_results"]
