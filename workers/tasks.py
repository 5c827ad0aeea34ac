"""The tagging task, registered on an app built from the worker's settings. Tasks stay thin: the work is
in workers.batch, the decisions in workers.retry; a task only raises or re-sends."""

from __future__ import annotations

import threading
import time

import structlog
from celery import Celery, Task
from celery.signals import worker_process_init, worker_process_shutdown

from tagger.errors import BrokerUnavailable, DatabaseUnavailable, TaggerError
from tagger.settings import Settings
from workers.batch import WrongWorker, process_batch
from workers.contract import TAG_BATCH, create_app
from workers.metrics import WorkerMetrics
from workers.retry import GiveUp, RetryPolicy, decide
from workers.runtime import Runtime

log = structlog.get_logger("tagger.worker")


class DeadLettered(Exception):
    """Ends a batch that dead-lettered repos, after every outcome is written: Flower then shows the batch
    as FAILURE with this exception, where an operator filters on it (its other repos are tagged, and
    the message is acknowledged all the same). An expected outcome: logged without a traceback."""


class RuntimeHolder:
    """The worker process's runtime (its model): given at start, or loaded once on first use (in each
    child of a prefork pool, after the fork)."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None, canary_run: int | None = None,
                 metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.canary_run = canary_run  # the canary run this worker serves; None: a live worker
        self.retry_policy = RetryPolicy.from_settings(settings)
        self.metrics = metrics if metrics is not None else WorkerMetrics()
        self._runtime = runtime
        self._lock = threading.Lock()
        if runtime is not None:
            self.metrics.configured(runtime.configuration)

    def get(self) -> Runtime:
        with self._lock:
            if self._runtime is None:
                self._runtime = Runtime.start(self.settings)
                self.metrics.configured(self._runtime.configuration)
            return self._runtime

    def close(self) -> None:
        with self._lock:
            runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.close()


def create_worker_app(settings: Settings, runtime: Runtime | None = None, canary_run: int | None = None,
                      metrics: WorkerMetrics | None = None) -> Celery:
    """The worker's app: the contract's app with the tagging task on it. Pass ``runtime`` when the model
    is already loaded (the threads and solo pools load it before consuming; so does the demo). A canary
    worker (``canary_run``) has ``settings.queue`` set to the canary's queue and tags only its batches.
    ``metrics``: where the task counts what it does (the worker's /metrics serves them)."""
    app = create_app(settings)
    holder = RuntimeHolder(settings, runtime, canary_run, metrics)
    register_tag_batch(app, holder)
    if runtime is None:
        worker_process_init.connect(lambda **_: holder.get(), weak=False)
        # A prefork child closes its own model (vLLM's engine processes) when it stops.
        worker_process_shutdown.connect(lambda **_: holder.close(), weak=False)
    return app


def register_tag_batch(app: Celery, holder: RuntimeHolder) -> Task:
    # max_retries=None: workers.retry.decide bounds the retries. Celery's own default (3) would drop a
    # batch after a few seconds of database outage (retry(max_retries=None) means "the task's default").
    @app.task(bind=True, name=TAG_BATCH, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
              max_retries=None, throws=(DeadLettered,))
    def tag_batch(self: Task, repo_ids: list[str], run_id: int | None = None) -> dict[str, int]:
        task_id = self.request.id
        metrics = holder.metrics
        metrics.taken(self.request)
        started = time.monotonic()
        try:
            # Inside the try: a prefork child that starts its runtime on first use while the database is
            # down retries the batch like any other outage, rather than failing (and acking) it.
            runtime = holder.get()
            structlog.contextvars.bind_contextvars(
                task_id=task_id, batch_size=len(repo_ids), backend=runtime.tagger.name, model=runtime.tagger.model,
                run_id=run_id,
            )
            plan = process_batch(runtime, repo_ids, task_id, run_id, holder.canary_run)
        except WrongWorker as exc:
            # Routing keeps this from happening (a canary has its own queue); should it happen anyway,
            # the batch is not tagged with the wrong configuration: dropped, loudly.
            log.error("message_refused", repo_ids=repo_ids[:20], run_id=run_id, error=str(exc))
            metrics.batch_failed(time.monotonic() - started, refused=True)
            return {"tagged": 0, "retried": 0, "dead": 0}
        except (DatabaseUnavailable, BrokerUnavailable) as exc:
            metrics.batch_failed(time.monotonic() - started)
            decision = decide(self.request.retries + 1, exc, holder.retry_policy)
            if isinstance(decision, GiveUp):
                # The repos stay 'queued' in Postgres: the sweeper re-enqueues them once it is back.
                log.error("task_abandoned", repo_ids=repo_ids, error=str(exc), attempts=self.request.retries + 1)
                raise
            log.info("task_retry", repo_ids=repo_ids, error=str(exc), attempt=self.request.retries + 1,
                     delay_s=round(decision.delay_s, 2))
            raise self.retry(exc=exc, countdown=decision.delay_s) from exc
        except TaggerError:
            metrics.batch_failed(time.monotonic() - started)
            log.exception("task_failed")
            raise
        except Exception:
            metrics.batch_failed(time.monotonic() - started)
            log.exception("task_crashed")
            raise
        finally:
            structlog.contextvars.clear_contextvars()
        if plan.retry_ids:
            try:
                ids = plan.retry_ids
                middle = (len(ids) + 1) // 2 if plan.split_retry else len(ids)
                for group in (ids[:middle], ids[middle:]):
                    if group:
                        tag_batch.apply_async((group, run_id), countdown=plan.retry_delay_s)
            except Exception as exc:  # their state says 'failed' in Postgres: the sweeper re-sends them
                log.warning("retry_publish_failed", task_id=task_id, repo_ids=plan.retry_ids[:20], error=str(exc))
        metrics.batch_done(runtime.configuration, tagged=len(plan.tagged), retried=len(plan.retry_ids),
                           dead=len(plan.dead), duration_s=time.monotonic() - started,
                           backend_s_per_repo=[r.latency_ms / 1000 for r in plan.results.values()])
        # The bound context is cleared by now: the task's fields are given again.
        log.info("batch_tagged", task_id=task_id, batch_size=len(repo_ids), backend=runtime.tagger.name,
                 model=runtime.tagger.model, tagged=len(plan.tagged), retried=len(plan.retry_ids),
                 dead=len(plan.dead))
        if plan.dead:
            shown = ", ".join(plan.dead[:20]) + (" ..." if len(plan.dead) > 20 else "")
            raise DeadLettered(f"{len(plan.dead)} of {len(repo_ids)} repos dead-lettered ({len(plan.tagged)} tagged, "
                               f"{len(plan.retry_ids)} retried): {shown}; see `tagger dlq list`")
        return {"tagged": len(plan.tagged), "retried": len(plan.retry_ids), "dead": len(plan.dead)}

    return tag_batch
