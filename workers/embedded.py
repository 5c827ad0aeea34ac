"""A Celery worker in a thread of this process: the embedded demo's worker.

It is Celery's own WorkController with the solo pool, consuming the same task (workers.tasks.tag_batch)
as a production worker; only the broker differs (kombu's in-process ``memory://``).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.worker import WorkController, state

from tagger.errors import TaggerError

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class _Controller(WorkController):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.consuming = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        self.consuming.set()


@contextmanager
def embedded_worker(app: Celery, queue: str) -> Iterator[threading.Thread]:
    """Run a solo-pool worker consuming ``queue`` in a daemon thread for the duration of the block."""
    app.conf.worker_pool = "solo"
    worker = _Controller(
        app=app, hostname=f"embedded@{socket.gethostname()}", pool="solo", concurrency=1, queues=[queue],
        without_heartbeat=True, without_mingle=True, without_gossip=True, loglevel="WARNING",
    )
    thread = threading.Thread(target=worker.start, name="tagger-worker", daemon=True)
    thread.start()
    if not worker.consuming.wait(START_TIMEOUT_S) or not thread.is_alive():
        raise TaggerError("the embedded worker did not start")
    try:
        yield thread
    finally:
        # How Celery stops a worker from another thread: its consume loop checks this flag.
        state.should_terminate = 0
        thread.join(STOP_TIMEOUT_S)
        state.should_terminate = None
