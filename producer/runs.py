"""Re-tagging you can trust: a shadow canary's diff against the live results and its promotion (its start,
which sends to the queue: producer.canary), a run's rollback, tags pinned by hand, a repo's history.

Every change is one transaction. Rollback and promote take the run's lock first: the run's writes in
flight finish before, and its later writes see the mark (db.runs.lock_run_for_write).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from db.canary import (
    ShadowDiff,
    ShadowVsLive,
    diff_shadow_against_live,
    iter_shadow_against_live,
    promote_shadow_results,
)
from db.engine import transaction
from db.history import PruneReport, ResultVersion, RollbackReport, prune_history, result_versions, rollback_run
from db.pins import Pin, get_pin, pin_tags, unpin_tags
from db.repos import repo_exists
from db.runs import Run, existing_run, lock_run, run_counts
from db.taxonomy import current_taxonomy_version, load_taxonomy
from tagger.errors import InputError
from tagger.evaluation import load_gold, score
from tagger.ids import validate_repo_id
from tagger.settings import Settings
from tagger.taxonomy import Taxonomy

log = structlog.get_logger("tagger.producer")

MAX_TAGS = 3


# --- runs ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunStatus:
    run: Run
    counts: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return self.run.as_dict() | {"counts": self.counts}


def find_run(settings: Settings, run_id: int, kind: str | None = None) -> RunStatus:
    """The run and its counts; InputError when there is no such run (or not of ``kind``)."""
    with transaction(settings.database_url) as conn:
        run = existing_run(conn, run_id, kind)
        return RunStatus(run, run_counts(conn, run))


# --- diff ------------------------------------------------------------------------------------------


@dataclass
class Diff:
    run_id: int
    sample: int
    done: int
    pending: int
    dead: int
    unchanged: int
    pinned: int
    added: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    changed_most: list[dict[str, Any]] = field(default_factory=list)
    gold: dict[str, Any] | None = None

    @property
    def share_unchanged(self) -> float | None:
        return round(self.unchanged / self.done, 4) if self.done else None

    def as_json(self) -> dict[str, Any]:
        return {"run": self.run_id, "sample": self.sample, "done": self.done, "pending": self.pending,
                "dead": self.dead, "unchanged": self.unchanged, "share_unchanged": self.share_unchanged,
                "pinned": self.pinned, "added": self.added, "removed": self.removed,
                "changed_most": self.changed_most, "gold": self.gold}


def describe(run_id: int, counted: ShadowDiff, names: Mapping[int, str]) -> Diff:
    """The server's counts (db.canary.diff_shadow_against_live) in tag names: gains and losses by count,
    then name; a tag id the taxonomy no longer has is shown as its number."""

    def named(ids: Iterable[int]) -> list[str]:
        return [names.get(i, str(i)) for i in ids]

    def by_count(counts: Mapping[int, int]) -> dict[str, int]:
        return dict(sorted(((names.get(i, str(i)), n) for i, n in counts.items()), key=lambda kv: (-kv[1], kv[0])))

    return Diff(run_id, counted.sample, counted.done, counted.pending, counted.dead, counted.unchanged, counted.pinned,
                added=by_count(counted.added), removed=by_count(counted.removed),
                changed_most=[{"id": repo_id, "old": named(live), "new": named(shadow), "changed": n}
                              for repo_id, live, shadow, n in counted.changed_most])


def score_on_gold(rows: Iterable[ShadowVsLive], gold: Mapping[str, Any], taxonomy: Taxonomy) -> dict[str, Any]:
    """Quality of live and shadow tags on the sample's labelled repos (matched by repo id or name in
    ``gold``, tagger.evaluation's labelled repos by repo)."""
    names = {t.id: t.name for t in taxonomy.tags}
    labelled = [(gold.get(r.repo_id) or gold.get(r.name or ""), r) for r in rows if r.state == "done"]
    matched = [(g, r) for g, r in labelled if g is not None]
    golds = [g for g, _ in matched]

    def tags_of(tag_ids: Any) -> list[str]:
        return [names[i] for i in (tag_ids or []) if i in names]

    live = score(golds, [tags_of(r.live) for _, r in matched]) if matched else None
    shadow = score(golds, [tags_of(r.shadow) for _, r in matched]) if matched else None
    keep = ("n", "precision", "recall", "f1", "hit_rate", "primary_at_3", "mean_tags")
    return {"labelled": len(matched),
            "live": {k: live[k] for k in keep} if live else None,
            "shadow": {k: shadow[k] for k in keep} if shadow else None}


def diff_run(settings: Settings, run_id: int, *, top: int = 10, gold_file: Path | None = None) -> Diff:
    find_run(settings, run_id, kind="canary")
    with transaction(settings.database_url) as conn:
        taxonomy = load_taxonomy(conn)
        gold = {g.repo: g for g in load_gold(gold_file, taxonomy)} if gold_file is not None else {}
        diff = describe(run_id, diff_shadow_against_live(conn, run_id, top), {t.id: t.name for t in taxonomy.tags})
        # The sample's repos the gold file labels (by id or name): as many as it has.
        labelled = list(iter_shadow_against_live(conn, run_id, only=list(gold))) if gold else []
    if gold_file is not None:
        diff.gold = score_on_gold(labelled, gold, taxonomy)
    return diff


# --- promote and rollback ------------------------------------------------------------------------------


@dataclass
class PromoteReport:
    run_id: int
    promoted: int
    skipped: int  # pinned by hand, or their README changed since the canary read it
    skipped_sample: list[str]  # a bounded sample of those, in id order
    pending: int  # not tagged by the canary yet: promote again once they are
    already: int  # promoted before


def promote_run(settings: Settings, run_id: int) -> PromoteReport:
    """Write a canary's results to live, except pinned repos and repos whose README changed since (the
    write step's own conditions). Only what was not promoted before: promoting twice is harmless."""
    with transaction(settings.database_url) as conn:
        existing_run(conn, run_id, kind="canary")
        run = lock_run(conn, run_id)
        if run is None or run.rolled_back_at is not None:
            raise InputError(f"run {run_id} was rolled back: promote a new canary instead")
        promotion = promote_shadow_results(conn, run_id)
        counts = run_counts(conn, run)
    report = PromoteReport(run_id, promotion.promoted, promotion.skipped, promotion.skipped_sample,
                           counts["queued"] + counts["failed"], counts["promoted"] - promotion.promoted)
    log.info("run_promoted", run_id=run_id, promoted=report.promoted, skipped=report.skipped,
             pending=report.pending)
    return report


def rollback(settings: Settings, run_id: int) -> RollbackReport:
    """Roll a run back (db.history.rollback_run): one transaction, set-based, whatever the run's size."""
    with transaction(settings.database_url) as conn:
        existing_run(conn, run_id)
        lock_run(conn, run_id)
        report = rollback_run(conn, run_id)
    log.info("run_rolled_back", run_id=run_id, restored=report.restored, removed=report.removed,
             changed_since=report.changed_since, pinned=report.pinned)
    return report


# --- manual tags and history ----------------------------------------------------------------------------


def _known_repo(conn: Any, raw_id: str) -> str:
    repo_id = validate_repo_id(raw_id)
    if not repo_exists(conn, repo_id):
        raise InputError(f"unknown repo id {repo_id!r}: it is not in the index")
    return repo_id


def resolve_tags(taxonomy: Taxonomy, raw: str) -> list[int]:
    """Tag names (comma-separated, as the taxonomy matches them) → ids; unknown names are an error."""
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if not names:
        raise InputError("give at least one tag name")
    ids: list[int] = []
    for name in names:
        tag = taxonomy.by_name(name)
        if tag is None:
            raise InputError(f"unknown tag name {name!r}: see the taxonomy (tagger/data/tags.json)")
        if tag.id not in ids:
            ids.append(tag.id)
    if len(ids) > MAX_TAGS:
        raise InputError(f"at most {MAX_TAGS} tags per repo, got {len(ids)}")
    return ids


def set_manual_tags(settings: Settings, raw_id: str, raw_tags: str, *, set_by: str, note: str) -> list[str]:
    """Pin tags on a repo; the names pinned."""
    with transaction(settings.database_url) as conn:
        repo_id = _known_repo(conn, raw_id)
        taxonomy = load_taxonomy(conn)
        tag_ids = resolve_tags(taxonomy, raw_tags)
        version = current_taxonomy_version(conn)
        pin_tags(conn, repo_id, tag_ids, set_by=set_by, note=note, taxonomy_version=version or 0)
    log.info("tags_pinned", repo_id=repo_id, tag_ids=tag_ids, set_by=set_by)
    names = {t.id: t.name for t in taxonomy.tags}
    return [names[i] for i in tag_ids]


def unset_manual_tags(settings: Settings, raw_id: str) -> Pin:
    with transaction(settings.database_url) as conn:
        repo_id = _known_repo(conn, raw_id)
        pin = unpin_tags(conn, repo_id)
        if pin is None:
            raise InputError(f"repo {repo_id!r} has no pinned tags")
    log.info("tags_unpinned", repo_id=repo_id)
    return pin


def history(settings: Settings, raw_id: str) -> tuple[list[ResultVersion], Pin | None, dict[int, str]]:
    """A repo's versions (newest first), its pin, and the taxonomy's names."""
    with transaction(settings.database_url) as conn:
        repo_id = _known_repo(conn, raw_id)
        versions = result_versions(conn, repo_id)
        pin = get_pin(conn, repo_id)
        names = {t.id: t.name for t in load_taxonomy(conn).tags}
    return versions, pin, names


def prune(settings: Settings, *, keep: int | None, before: datetime | None, dry_run: bool) -> PruneReport:
    """History retention (db.history.prune_history): one transaction."""
    if keep is not None and keep < 0:
        raise InputError(f"--keep must be 0 or more, not {keep}")
    with transaction(settings.database_url) as conn:
        report = prune_history(conn, keep=keep, before=before, dry_run=dry_run)
    log.info("history_pruned", versions=report.versions, dry_run=dry_run, lost_rollbacks=sorted(report.lost_rollbacks))
    return report
