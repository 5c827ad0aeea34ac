"""One batch, start to finish: read READMEs in one query, tag them in one backend call, write every
outcome in one transaction. Free of Celery, so the demo and the benchmarks run the very same code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from db.engine import transaction
from db.queries import (
    delete_dead_letters,
    fetch_readmes,
    job_attempts,
    mark_done,
    record_dead_letters,
    schedule_retries,
    upsert_results,
)
from tagger.engine import Tagged
from tagger.errors import RepoNotFound, TaggerError, TransientError
from workers.retry import DeadLetter, RetryPolicy, decide
from workers.runtime import Runtime

log = structlog.get_logger("tagger.worker")


@dataclass
class BatchOutcome:
    tagged: list[str] = field(default_factory=list)
    retry_ids: list[str] = field(default_factory=list)
    retry_delay_s: float = 0.0
    dead: list[str] = field(default_factory=list)


def process_batch(runtime: Runtime, repo_ids: Sequence[str], task_id: str | None) -> BatchOutcome:
    """Raises only for faults of the whole batch (database down); per-repo failures are recorded."""
    settings = runtime.settings
    ids = sorted(set(repo_ids))
    with transaction(settings.database_url) as conn:
        rows = fetch_readmes(conn, ids)
    found = [i for i in ids if i in rows]

    failures: dict[str, TaggerError] = {i: RepoNotFound(f"repo {i!r} is not in the index") for i in ids if i not in rows}
    tagged: dict[str, Tagged] = {}
    if found:
        try:
            outcomes = runtime.engine.tag([rows[i].readme for i in found])
        except TransientError as exc:  # the whole call failed: every repo in it failed the same way
            outcomes = [exc] * len(found)
        for repo_id, outcome in zip(found, outcomes, strict=True):
            if isinstance(outcome, Tagged):
                tagged[repo_id] = outcome
            else:
                failures[repo_id] = outcome

    outcome = BatchOutcome(tagged=sorted(tagged))
    config = runtime.configuration
    policy = RetryPolicy(settings.max_attempts, settings.retry_base_s, settings.retry_max_s)
    with transaction(settings.database_url) as conn:
        upsert_results(
            conn,
            [
                {
                    "repo_id": repo_id,
                    "tag_ids": [t.id for t in result.tags],
                    **config,
                    "readme_hash": rows[repo_id].readme_hash,
                    "readme_version": rows[repo_id].readme_version,
                    "raw_output": result.raw,
                    "latency_ms": result.latency_ms,
                }
                for repo_id, result in tagged.items()
            ],
        )
        mark_done(conn, outcome.tagged, task_id)
        delete_dead_letters(conn, [i for i in outcome.tagged if rows[i].dead_lettered])

        attempts = job_attempts(conn, sorted(failures)) if failures else {}
        retries: list[tuple[str, int, float, str]] = []
        letters = []
        for repo_id, error in sorted(failures.items()):
            attempt = attempts.get(repo_id, 0) + 1
            decision = decide(attempt, error, policy)
            if isinstance(decision, DeadLetter):
                letters.append(
                    {"repo_id": repo_id, "error_class": type(error).__name__, "message": str(error), "attempts": attempt}
                )
                outcome.dead.append(repo_id)
            else:
                retries.append((repo_id, attempt, decision.delay_s, f"{type(error).__name__}: {error}"))
                outcome.retry_ids.append(repo_id)
                outcome.retry_delay_s = max(outcome.retry_delay_s, decision.delay_s)
        schedule_retries(conn, retries, task_id)
        record_dead_letters(conn, letters, task_id)

    for repo_id, result in tagged.items():
        log.debug("repo_tagged", repo_id=repo_id, tags=[t.name for t in result.tags], latency_ms=round(result.latency_ms, 1))
    for repo_id, attempt, delay, error in retries:
        log.info("task_retry", repo_id=repo_id, task_id=task_id, attempt=attempt, delay_s=round(delay, 2), error=error)
    for letter in letters:
        log.warning("dead_lettered", repo_id=letter["repo_id"], task_id=task_id, error_class=letter["error_class"],
              attempts=letter["attempts"], message=letter["message"][:300])
    return outcome
