"""The exporter's metrics (`tagger metrics`): the state of the whole pipeline, read from PostgreSQL and
Redis at each scrape, and the workers that answer a ping. What the workers did (counters, histograms)
each worker serves itself (workers/metrics.py); rates are PromQL's job, not ours.

Every scrape queries PostgreSQL and Redis afresh: nothing drifts, and any number of exporters may run. The
one exception is the workers' ping (WorkerWatch): a broadcast ping waits its whole timeout, so it is asked
in a thread of its own and a scrape reads its last answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import structlog
from celery import Celery
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from db.engine import transaction
from db.jobs import job_state_counts
from db.progress import canaries_pending, recent_run_ids, runs_progress
from producer.health import PING_TIMEOUT_S, check_broker, check_database, ping_workers
from tagger.errors import TaggerError
from tagger.settings import Settings
from workers.contract import create_app, maintenance_queue, queue_depth

log = structlog.get_logger("tagger.metrics")

RUNS_SHOWN = 5  # the newest runs get progress gauges (the dashboard's "runs" panel)
WATCH_INTERVAL_S = 5.0  # between two pings of the workers: the answer a scrape reads is at most this + 1 s old


class WorkerWatch:
    """The workers of a queue answering a ping, asked every ``interval_s`` in a daemon thread. A broadcast
    ping cannot know how many answers to expect, so it always waits its whole timeout (PING_TIMEOUT_S): in
    the scrape, it was most of the scrape's time. The first read waits for the first answer."""

    def __init__(self, app: Celery, queue: str, interval_s: float = WATCH_INTERVAL_S) -> None:
        self.app, self.queue, self.interval_s = app, queue, interval_s
        self._answered: list[str] = []
        self._first = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def online(self) -> list[str]:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
                self._thread.start()
        self._first.wait()
        return self._answered

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._answered = ping_workers(self.app, self.queue)  # never raises: none answer on an outage
            self._first.set()
            self._stop.wait(self.interval_s)


def _with_value(gauge: GaugeMetricFamily, value: float) -> GaugeMetricFamily:
    gauge.add_metric([], value)
    return gauge


class PipelineCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.workers = WorkerWatch(self.app, settings.queue)

    def health(self) -> tuple[bool, Mapping[str, Any]]:
        """The exporter's /healthz: PostgreSQL and Redis answer now (workers are the metrics' business)."""
        database, broker = check_database(self.settings), check_broker(self.settings)
        return database.ok and broker.ok, {"database": database.ok, "broker": broker.ok}

    def collect(self) -> Iterator[Metric]:
        yield from self._database_metrics()
        yield from self._broker_metrics()

    def _database_metrics(self) -> Iterator[Metric]:
        database_up = GaugeMetricFamily("tagger_database_up", "1 when this scrape could read PostgreSQL.")
        try:
            with transaction(self.settings.database_url) as conn:
                states = job_state_counts(conn)
                progress = runs_progress(conn, recent_run_ids(conn, RUNS_SHOWN))
                canaries = canaries_pending(conn)
        except TaggerError as exc:
            log.warning("metrics_database_unavailable", error=str(exc))
            yield _with_value(database_up, 0)
            return
        yield _with_value(database_up, 1)
        by_state = GaugeMetricFamily("tagger_repos", "Repos by job state (untracked: never enqueued; dead: "
                                     "dead-lettered).", labels=["state"])
        for state, n in sorted(states.items()):
            by_state.add_metric([state], n)
        yield by_state
        labels = ["run", "kind"]
        enqueued = GaugeMetricFamily("tagger_run_enqueued", f"Repos sent by each of the {RUNS_SHOWN} newest runs "
                                     "(a canary: its sample).", labels=labels)
        tagged = GaugeMetricFamily("tagger_run_tagged", "Repos each of those runs wrote a result for (still live "
                                   "or replaced since).", labels=labels)
        pending = GaugeMetricFamily("tagger_run_pending", "Repos each of those runs still has to tag.",
                                    labels=labels)
        for run in progress:
            key = [str(run.run_id), run.kind]
            enqueued.add_metric(key, run.enqueued)
            tagged.add_metric(key, run.tagged)
            pending.add_metric(key, run.pending)
        yield from (enqueued, tagged, pending)
        canary = GaugeMetricFamily("tagger_canary_pending", "Repos of a canary's sample not tagged yet (canaries "
                                   "neither promoted nor rolled back).", labels=["run"])
        for run_id, n in sorted(canaries.items()):
            canary.add_metric([str(run_id)], n)
        yield canary

    def _broker_metrics(self) -> Iterator[Metric]:
        settings = self.settings
        broker_up = GaugeMetricFamily("tagger_broker_up", "1 when this scrape could read the broker.")
        depth = GaugeMetricFamily("tagger_queue_depth", "Messages (batches) waiting in a queue.", labels=["queue"])
        try:
            for queue in (settings.queue, maintenance_queue(settings.queue)):
                depth.add_metric([queue], queue_depth(settings.broker_url, queue))
        except TaggerError as exc:
            log.warning("metrics_broker_unavailable", error=str(exc))
            yield _with_value(broker_up, 0)
            return
        yield _with_value(broker_up, 1)
        yield depth
        yield GaugeMetricFamily("tagger_queue_high_water", "Batches above which producers pause "
                                "(TAGGER_QUEUE_HIGH_WATER).", value=settings.queue_high_water)
        workers = GaugeMetricFamily("tagger_workers_online", f"Workers of the tagging queue answering a ping within "
                                    f"{PING_TIMEOUT_S:g} s (asked every {WATCH_INTERVAL_S:g} s).")
        workers.add_metric([], len(self.workers.online()))
        yield workers
