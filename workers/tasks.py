"""Celery tasks. They stay thin: the work is in workers.batch and producer, decisions in workers.retry."""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task
from celery.signals import worker_process_init, worker_ready

from tagger.errors import BrokerUnavailable, DatabaseUnavailable, TaggerError
from tagger.settings import get_settings
from workers.app import REFRESH, SWEEP, TAG_BATCH, app
from workers.batch import process_batch
from workers.retry import DeadLetter, RetryPolicy, decide
from workers.runtime import get_runtime

log = structlog.get_logger("tagger.worker")


@worker_process_init.connect
def _load_model_in_child(**_: Any) -> None:
    get_runtime()  # prefork pool: each child loads its model once, after the fork


@worker_ready.connect
def _load_model_in_solo(sender: Any = None, **_: Any) -> None:
    if sender is None or sender.app.conf.get("worker_pool", "prefork") not in ("solo", "threads"):
        return
    consumer = getattr(sender, "task_consumer", None)
    queues = {q.name for q in getattr(consumer, "queues", ())}
    if queues and get_settings().queue not in queues:
        return  # the maintenance worker inside `tagger beat` tags nothing: no model
    get_runtime()


# max_retries=None: workers.retry.decide bounds the retries. Celery's own default (3) would drop a
# batch after a few seconds of database outage (retry(max_retries=None) means "the task's default").
@app.task(bind=True, name=TAG_BATCH, acks_late=True, reject_on_worker_lost=True, ignore_result=True, max_retries=None)
def tag_batch(self: Task, repo_ids: list[str]) -> dict[str, int]:
    task_id = self.request.id
    runtime = get_runtime()
    structlog.contextvars.bind_contextvars(
        task_id=task_id, batch_size=len(repo_ids), backend=runtime.tagger.name, model=runtime.tagger.model
    )
    try:
        outcome = process_batch(runtime, repo_ids, task_id)
    except (DatabaseUnavailable, BrokerUnavailable) as exc:
        settings = runtime.settings
        policy = RetryPolicy(settings.max_attempts, settings.retry_base_s, settings.retry_max_s)
        decision = decide(self.request.retries + 1, exc, policy)
        if isinstance(decision, DeadLetter):
            # The repos stay 'queued' in Postgres: the sweeper re-enqueues them once it is back.
            log.error("task_abandoned", repo_ids=repo_ids, error=str(exc), attempts=self.request.retries + 1)
            raise
        log.info("task_retry", repo_ids=repo_ids, error=str(exc), attempt=self.request.retries + 1,
                 delay_s=round(decision.delay_s, 2))
        raise self.retry(exc=exc, countdown=decision.delay_s) from exc
    except TaggerError:
        log.exception("task_failed")
        raise
    except Exception:
        log.exception("task_crashed")
        raise
    finally:
        structlog.contextvars.clear_contextvars()
    if outcome.retry_ids:
        try:
            ids = outcome.retry_ids
            middle = (len(ids) + 1) // 2 if outcome.split_retry else len(ids)
            for group in (ids[:middle], ids[middle:]):
                if group:
                    tag_batch.apply_async((group,), countdown=outcome.retry_delay_s)
        except Exception as exc:  # their state says 'failed' in Postgres: the sweeper re-sends them
            log.warning("retry_publish_failed", task_id=task_id, repo_ids=outcome.retry_ids[:20], error=str(exc))
    # The bound context is cleared by now: the task's fields are given again.
    log.info("batch_tagged", task_id=task_id, batch_size=len(repo_ids), backend=runtime.tagger.name,
             model=runtime.tagger.model, tagged=len(outcome.tagged), retried=len(outcome.retry_ids),
             dead=len(outcome.dead))
    return {"tagged": len(outcome.tagged), "retried": len(outcome.retry_ids), "dead": len(outcome.dead)}


@app.task(name=SWEEP, ignore_result=True)
def sweep() -> int:
    from producer.enqueue import sweep_stuck

    # A sweep already running (another beat, a person) covers this one: skip rather than wait.
    return sweep_stuck(get_settings(), wait=False)


@app.task(name=REFRESH, ignore_result=True)
def refresh_stale() -> int:
    from producer.enqueue import enqueue_selection

    return enqueue_selection(get_settings(), "stale", wait=False).sent
