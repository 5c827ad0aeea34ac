"""One batch, start to finish: read READMEs in one query, tag them in one backend call, write every
outcome in one transaction. Free of Celery, so the demo and the benchmarks run the very same code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
from tagger.errors import BackendUnavailable, RepoNotFound, TaggerError
from workers.retry import DeadLetter, Decision, Retry, RetryPolicy, backoff, decide
from workers.runtime import Runtime

log = structlog.get_logger("tagger.worker")


@dataclass
class BatchOutcome:
    tagged: list[str] = field(default_factory=list)
    retry_ids: list[str] = field(default_factory=list)
    retry_delay_s: float = 0.0
    dead: list[str] = field(default_factory=list)
    # The backend call failed as a whole for several repos: retry them in halves, so one README that
    # breaks the call ends up alone and takes the blame (and the attempts) by itself.
    split_retry: bool = False


def process_batch(runtime: Runtime, repo_ids: Sequence[str], task_id: str | None) -> BatchOutcome:
    """Raises only for faults of the whole batch (database down); per-repo failures are recorded."""
    settings = runtime.settings
    ids = sorted(set(repo_ids))
    with transaction(settings.database_url) as conn:
        rows = fetch_readmes(conn, ids)
    found = [i for i in ids if i in rows]

    failures: dict[str, TaggerError] = {
        i: RepoNotFound(f"repo {i!r} is not in the index") for i in ids if i not in rows
    }
    tagged: dict[str, Tagged] = {}
    shared_failure: TaggerError | None = None
    if found:
        try:
            outcomes = runtime.engine.tag([rows[i].readme for i in found])
        except Exception as exc:  # the whole call failed: every repo in it failed the same way
            # Any kind, not only transient ones: a crash must count attempts per repo and end in dead
            # letters, not fail the message again and again each time the sweeper re-sends it.
            error = exc if isinstance(exc, TaggerError) else BackendUnavailable(f"{type(exc).__name__}: {exc}")
            outcomes = [error] * len(found)
            if len(found) > 1:
                shared_failure = error
        for repo_id, tagged_or_error in zip(found, outcomes, strict=True):
            if isinstance(tagged_or_error, Tagged):
                tagged[repo_id] = tagged_or_error
            else:
                failures[repo_id] = tagged_or_error

    outcome = BatchOutcome(tagged=sorted(tagged), split_retry=shared_failure is not None)
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
                    # PostgreSQL text cannot hold NUL: one odd answer must not fail the whole write.
                    "raw_output": result.raw.replace("\x00", ""),
                    "latency_ms": result.latency_ms,
                }
                for repo_id, result in tagged.items()
            ],
        )
        mark_done(conn, outcome.tagged, task_id)
        delete_dead_letters(conn, [i for i in outcome.tagged if rows[i].dead_lettered])

        attempts = job_attempts(conn, sorted(failures)) if failures else {}
        retries: list[tuple[str, int, float, str]] = []
        letters: list[dict[str, Any]] = []
        for repo_id, error in sorted(failures.items()):
            if error is shared_failure:
                # Not counted: the failure may be a neighbour's. Bisection isolates it in log2(n) rounds.
                attempt = attempts.get(repo_id, 0)
                decision: Decision = Retry(backoff(attempt + 1, policy))
            else:
                attempt = attempts.get(repo_id, 0) + 1
                decision = decide(attempt, error, policy)
            if isinstance(decision, DeadLetter):
                letters.append(
                    {"repo_id": repo_id, "error_class": type(error).__name__, "message": str(error),
                     "attempts": attempt}
                )
                outcome.dead.append(repo_id)
            else:
                retries.append((repo_id, attempt, decision.delay_s, f"{type(error).__name__}: {error}"))
                outcome.retry_ids.append(repo_id)
                outcome.retry_delay_s = max(outcome.retry_delay_s, decision.delay_s)
        schedule_retries(conn, retries, task_id)
        record_dead_letters(conn, letters, task_id)

    for repo_id, result in tagged.items():
        log.debug("repo_tagged", repo_id=repo_id, tags=[t.name for t in result.tags],
                  latency_ms=round(result.latency_ms, 1), prompt_tokens=result.prompt_tokens,
                  evaluated_tokens=result.evaluated_tokens)
    for repo_id, attempt, delay, reason in retries:
        log.info("task_retry", repo_id=repo_id, task_id=task_id, attempt=attempt, delay_s=round(delay, 2), error=reason)
    for letter in letters:
        log.warning("dead_lettered", repo_id=letter["repo_id"], task_id=task_id, error_class=letter["error_class"],
                    attempts=letter["attempts"], message=letter["message"][:300])
    return outcome
