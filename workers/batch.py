"""One batch, start to finish: read READMEs in one query, tag them in one backend call, decide each
repo's fate (:func:`plan_batch`, pure), write every outcome in one transaction (:func:`write_plan`),
live or into a canary's shadow results alike.
Free of Celery, so the demo and the benchmarks run the very same code."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy import Connection

from db.configuration import Configuration
from db.dead_letters import DeadLetter
from db.engine import autocommit, transaction
from db.models import ResultRow
from db.repos import ReadmeRow, fetch_readmes
from db.runs import Run, get_run, lock_run_for_write
from db.work import LIVE, Outcomes, ScheduledRetry, Store, attempts, canary_store, record_outcomes
from tagger.engine import Tagged, TaggingEngine
from tagger.errors import BackendUnavailable, ConfigError, RepoNotFound, TaggerError
from workers.retry import GiveUp, Retry, RetryPolicy, backoff, decide
from workers.runtime import Runtime

log = structlog.get_logger("tagger.worker")


@dataclass
class BatchPlan:
    """What happens to each repo of a batch: a result, a retry, or a dead letter."""

    results: dict[str, Tagged] = field(default_factory=dict)
    retries: list[ScheduledRetry] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # The backend call failed as a whole for several repos: retry them in halves, so one README that
    # breaks the call ends up alone and takes the blame (and the attempts) by itself.
    split_retry: bool = False

    @property
    def tagged(self) -> list[str]:
        return sorted(self.results)

    @property
    def retry_ids(self) -> list[str]:
        return [r.repo_id for r in self.retries]

    @property
    def retry_delay_s(self) -> float:
        return max((r.delay_s for r in self.retries), default=0.0)

    @property
    def dead(self) -> list[str]:
        return [d.repo_id for d in self.dead_letters]


@dataclass(frozen=True, slots=True)
class TaggingOutcome:
    """What the model made of a batch: a result or an error per repo, and the error that failed the
    whole call for several repos at once, if one did."""

    per_repo: dict[str, Tagged | TaggerError]
    shared_failure: TaggerError | None = None


def tag_found(engine: TaggingEngine, ids: Sequence[str], readmes: Mapping[str, ReadmeRow]) -> TaggingOutcome:
    """Tag the repos of ``ids`` found in ``readmes`` with one engine call; the missing ones fail alone."""
    per_repo: dict[str, Tagged | TaggerError] = {
        i: RepoNotFound(f"repo {i!r} is not in the index") for i in ids if i not in readmes
    }
    found = [i for i in ids if i in readmes]
    if not found:
        return TaggingOutcome(per_repo)
    try:
        outcomes = engine.tag([readmes[i].readme for i in found], [readmes[i].name or "" for i in found])
    except Exception as exc:  # the whole call failed: every repo in it failed the same way
        # Any kind, not only transient ones: a crash must count attempts per repo and end in dead
        # letters, not fail the message again and again each time the sweeper re-sends it.
        error = exc if isinstance(exc, TaggerError) else BackendUnavailable(f"{type(exc).__name__}: {exc}")
        per_repo.update(dict.fromkeys(found, error))
        return TaggingOutcome(per_repo, error if len(found) > 1 else None)
    per_repo.update(zip(found, outcomes, strict=True))
    return TaggingOutcome(per_repo)


def plan_batch(
    tagging: TaggingOutcome,
    attempts_so_far: Mapping[str, int],
    policy: RetryPolicy,
    rand: Callable[[], float] = random.random,
) -> BatchPlan:
    """Each repo's fate, decided from its outcome and its failed attempts so far. Pure."""
    plan = BatchPlan(split_retry=tagging.shared_failure is not None)
    for repo_id, outcome in sorted(tagging.per_repo.items()):
        if isinstance(outcome, Tagged):
            plan.results[repo_id] = outcome
            continue
        if outcome is tagging.shared_failure:
            # Not counted: the failure may be a neighbour's. Bisection isolates it in log2(n) rounds.
            attempts = attempts_so_far.get(repo_id, 0)
            decision: Retry | GiveUp = Retry(backoff(attempts + 1, policy, rand))
        else:
            attempts = attempts_so_far.get(repo_id, 0) + 1
            decision = decide(attempts, outcome, policy, rand)
        if isinstance(decision, GiveUp):
            plan.dead_letters.append(DeadLetter(repo_id, type(outcome).__name__, str(outcome), attempts))
        else:
            plan.retries.append(
                ScheduledRetry(repo_id, attempts, decision.delay_s, f"{type(outcome).__name__}: {outcome}")
            )
    return plan


def result_row(repo_id: str, result: Tagged, readme: ReadmeRow, configuration: Configuration) -> ResultRow:
    """A result as stored (db.models.RESULT_FIELDS), live or shadow: its tags, what computed them, and
    from which README."""
    return {
        "repo_id": repo_id,
        "tag_ids": [t.id for t in result.tags],
        **configuration.as_dict(),
        "readme_hash": readme.readme_hash,
        "readme_version": readme.readme_version,
        # PostgreSQL text cannot hold NUL: one odd answer must not fail the whole write.
        "raw_output": result.raw.replace("\x00", ""),
        "latency_ms": result.latency_ms,
        "tag_scores": list(result.scores) if result.scores else None,
        "confidence": result.scores[0] if result.scores else None,
    }


def write_plan(
    conn: Connection,
    store: Store,
    plan: BatchPlan,
    readmes: Mapping[str, ReadmeRow],
    configuration: Configuration,
    task_id: str | None,
    run_id: int | None = None,
    keep_results: bool = True,
) -> None:
    """Every outcome of the batch into ``store`` (live, or a canary's shadow results), in the caller's
    transaction. ``keep_results`` False (the run was rolled back meanwhile): the repos are done, their
    results dropped."""
    outcomes = Outcomes(
        results=[result_row(repo_id, result, readmes[repo_id], configuration)
                 for repo_id, result in plan.results.items()],
        retries=plan.retries,
        dead=plan.dead_letters,
        revived=[i for i in plan.tagged if readmes[i].dead_lettered],
    )
    record_outcomes(conn, store, outcomes, task_id=task_id, run_id=run_id, keep_results=keep_results)


class WrongWorker(ConfigError):
    """A message this worker must not tag: a canary's batch on a live worker, or another run's batch on
    a canary worker (whose configuration is only checked against its own run)."""


def check_run(run: Run | None, run_id: int | None, canary_run: int | None) -> bool:
    """Whether the batch of ``run_id`` (``run``: its row) is a canary's; raises WrongWorker when this
    worker (``canary_run``: the canary it serves, None for a live worker) must not take it."""
    if canary_run is not None:
        if run_id != canary_run or run is None:
            raise WrongWorker(f"a worker of canary run {canary_run} got a batch of run {run_id}")
        return True
    if run is not None and run.is_canary:
        raise WrongWorker(f"a live worker got a batch of canary run {run_id}")
    return False


def process_batch(runtime: Runtime, repo_ids: Sequence[str], task_id: str | None, run_id: int | None = None,
                  canary_run: int | None = None) -> BatchPlan:
    """Raises only for faults of the whole batch (database down) and for a batch this worker must not
    take (WrongWorker); per-repo failures are recorded. A canary's batch is written to its shadow results
    only."""
    url = runtime.settings.database_url
    ids = sorted(set(repo_ids))
    run = runtime.known_runs.get(run_id) if run_id is not None else None
    # Reads outside a transaction (each statement its own snapshot; a run's row never changes kind):
    # no BEGIN and COMMIT round trips before the model.
    with autocommit(url) as conn:
        if run_id is not None and run is None:
            run = get_run(conn, run_id)
        readmes = fetch_readmes(conn, ids)
    if run_id is not None and run is not None:
        runtime.known_runs[run_id] = run
    shadow = check_run(run, run_id, canary_run)
    if run_id is not None and run is None:
        log.warning("unknown_run", run_id=run_id, task_id=task_id)
        run_id = None
    store = canary_store(run_id) if shadow and run_id is not None else LIVE
    tagging = tag_found(runtime.engine, ids, readmes)
    failed = [i for i, outcome in tagging.per_repo.items() if not isinstance(outcome, Tagged)]
    with transaction(url) as conn:
        # Read in the transaction that writes them: a redelivered copy of this batch cannot double-count.
        so_far = attempts(conn, store, sorted(failed)) if failed else {}
        plan = plan_batch(tagging, so_far, runtime.retry_policy)
        locked = lock_run_for_write(conn, run_id) if run_id is not None else None
        rolled_back = locked is not None and locked.rolled_back_at is not None
        write_plan(conn, store, plan, readmes, runtime.configuration, task_id, run_id, keep_results=not rolled_back)
    if rolled_back and plan.results:
        log.warning("results_dropped", run_id=run_id, task_id=task_id, repos=len(plan.results),
                    reason="the run was rolled back")
    _log_plan(plan, task_id)
    return plan


def _log_plan(plan: BatchPlan, task_id: str | None) -> None:
    for repo_id, result in plan.results.items():
        log.debug("repo_tagged", repo_id=repo_id, tags=[t.name for t in result.tags],
                  latency_ms=round(result.latency_ms, 1), prompt_tokens=result.prompt_tokens,
                  evaluated_tokens=result.evaluated_tokens)
    for retry in plan.retries:
        log.info("task_retry", repo_id=retry.repo_id, task_id=task_id, attempt=retry.attempts,
                 delay_s=round(retry.delay_s, 2), error=retry.reason)
    for letter in plan.dead_letters:
        log.warning("dead_lettered", repo_id=letter.repo_id, task_id=task_id, error_class=letter.error_class,
                    attempts=letter.attempts, message=letter.message[:300])
