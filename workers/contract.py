"""The message contract between producers and workers, in one place: task names, queues, the Celery
app every process builds from its settings, and the broker client that reads queue depths.

JSON only, late acks, one message at a time per worker process. A tagging message is a list of repo
ids and the id of the run that sent them (one per message); Postgres, not the message, says what a
repo needs.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery
from celery.signals import before_task_publish

from tagger.settings import Settings

# The broker client lives in workers.queues (no Celery: `tagger status` reads depths without loading it).
from workers.queues import PRIORITY_SUFFIXES, broker_client, is_redis, queue_depth

__all__ = ["PRIORITY_SUFFIXES", "broker_client", "is_redis", "queue_depth"]

TAG_BATCH = "tagger.tag_batch"
SWEEP = "tagger.sweep"
REFRESH = "tagger.refresh_stale"

# Every message carries the time it was sent (a header; Celery's own messages do not say): the worker
# observes how long it waited in the queue (tagger_queue_wait_seconds).
SENT_AT_HEADER = "tagger_sent_at"


@before_task_publish.connect(weak=False)
def _stamp_sent_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # Always now, never kept: a retry re-sent by the task must not carry its first sending's time.
    if headers is not None:
        headers[SENT_AT_HEADER] = time.time()


def maintenance_queue(queue: str) -> str:
    """Where beat sends the sweep and the stale refresh: a queue of its own, consumed by the `tagger beat`
    leader, so a refresh that waits on backpressure never holds a GPU worker (which would deadlock it)."""
    return f"{queue}.maintenance"


def canary_queue(queue: str, run_id: int) -> str:
    """Where a canary run's batches go: a queue of their own, consumed only by `tagger worker --canary RUN`
    (which checks that it runs the canary's configuration), never by the live workers."""
    return f"{queue}.canary.{run_id}"


def create_app(settings: Settings) -> Celery:
    """An app speaking the contract with ``settings``' broker and queue. Producers send with it as it is;
    workers and beat register their tasks on it."""
    app = Celery("repo_tagger", broker=settings.broker_url)
    maintenance = maintenance_queue(settings.queue)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        # A message is acknowledged only once its results are in Postgres; a worker killed mid-batch
        # leaves it to be redelivered (and the sweeper covers messages Redis itself loses).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        task_routes={
            TAG_BATCH: {"queue": settings.queue},
            SWEEP: {"queue": maintenance},
            REFRESH: {"queue": maintenance},
        },
        # kombu restores unacked messages under a Redis lock that expires after 300 s: a worker killed
        # while holding it would hold back every restore that long. It never needs to outlive the
        # timeout it enforces.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s,
                                  "unacked_mutex_expire": min(300, settings.visibility_timeout_s)},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # Our log lines go to whatever sys.stderr is when they are written (tagger.logs); Celery's swapping
        # it for a logging proxy would loop them back into logging, where they are lost.
        worker_redirect_stdouts=False,
        worker_send_task_events=True,
        # task-sent events: Flower shows when each batch was sent, hence how long it waited.
        task_send_sent_event=True,
        enable_utc=True,
        # A run that is still waiting when the next one is due is dropped (expires): runs never pile up.
        beat_schedule={
            "sweep": {"task": SWEEP, "schedule": float(settings.sweep_interval_s),
                      "options": {"queue": maintenance, "expires": float(settings.sweep_interval_s)}},
            "refresh-stale": {"task": REFRESH, "schedule": float(settings.refresh_interval_s),
                              "options": {"queue": maintenance, "expires": float(settings.refresh_interval_s)}},
        },
    )
    return app
