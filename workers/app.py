"""The Celery app: JSON only, late acks, one message at a time per worker process."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from tagger.settings import Settings, get_settings

TAG_BATCH = "tagger.tag_batch"
SWEEP = "tagger.sweep"
REFRESH = "tagger.refresh_stale"


def maintenance_queue(queue: str) -> str:
    """Where beat sends the sweep and the stale refresh: a queue of its own, consumed by the `tagger beat`
    leader, so a refresh that waits on backpressure never holds a GPU worker (which would deadlock it)."""
    return f"{queue}.maintenance"


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("repo_tagger", broker=settings.broker_url, include=["workers.tasks"])
    configure(app, settings)
    return app


def configure(app: Celery, settings: Settings) -> None:
    """Apply ``settings`` to ``app``; the embedded demo re-points the app at its own URLs with it."""
    maintenance = maintenance_queue(settings.queue)
    app.conf.update(
        broker_url=settings.broker_url,
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
                                  "unacked_mutex_expire": min(300, settings.visibility_timeout_s)}
        # kombu's in-process broker (the demo) polls, once a second unless told otherwise.
        | ({"polling_interval": 0.05} if settings.broker_url.startswith("memory://") else {}),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=False,
        enable_utc=True,
        # A run that is still waiting when the next one is due is dropped (expires): runs never pile up.
        beat_schedule={
            "sweep": {"task": SWEEP, "schedule": float(settings.sweep_interval_s),
                      "options": {"queue": maintenance, "expires": float(settings.sweep_interval_s)}},
            "refresh-stale": {"task": REFRESH, "schedule": float(settings.refresh_interval_s),
                              "options": {"queue": maintenance, "expires": float(settings.refresh_interval_s)}},
        },
    )


@lru_cache(maxsize=8)
def app_for(broker_url: str, queue: str) -> Celery:
    """An app for sending to ``broker_url`` (producers, which may be configured apart from the env)."""
    return create_app(get_settings().model_copy(update={"broker_url": broker_url, "queue": queue}))


app = create_app()
