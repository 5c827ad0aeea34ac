"""Our own Prometheus metrics: what Flower cannot know (queue depth, job states, dead letters, rate).

Every scrape queries PostgreSQL and Redis afresh (a few COUNTs): nothing is cached, nothing drifts,
and the endpoint needs no state of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from db.engine import transaction
from db.jobs import job_state_counts, status_counts
from db.results import tag_rate
from tagger.errors import TaggerError
from tagger.settings import Settings
from workers.contract import maintenance_queue, queue_depth

log = structlog.get_logger("tagger.metrics")

RATE_WINDOW_S = 60


class PipelineCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        settings = self.settings
        database_up = GaugeMetricFamily("tagger_database_up", "1 when the last scrape could read PostgreSQL.")
        try:
            with transaction(settings.database_url) as conn:
                states = job_state_counts(conn)
                counts = status_counts(conn)
                rate = tag_rate(conn, RATE_WINDOW_S)
        except TaggerError as exc:
            log.warning("metrics_database_unavailable", error=str(exc))
            database_up.add_metric([], 0)
        else:
            database_up.add_metric([], 1)
            by_state = GaugeMetricFamily(
                "tagger_repos", "Repos by job state (untracked: never enqueued).", labels=["state"]
            )
            for state, n in sorted(states.items()):
                by_state.add_metric([state], n)
            yield by_state
            yield GaugeMetricFamily("tagger_repos_tagged", "Repos with a result.", value=counts["tagged"])
            yield GaugeMetricFamily("tagger_dead_letters", "Repos in the dead-letter table.", value=counts["dead"])
            yield GaugeMetricFamily(
                "tagger_tag_rate_per_second", f"Results written per second over the last {RATE_WINDOW_S}s.",
                value=rate,
            )
        yield database_up

        broker_up = GaugeMetricFamily("tagger_broker_up", "1 when the last scrape could read the broker.")
        depth = GaugeMetricFamily("tagger_queue_depth", "Messages (batches) waiting in a queue.", labels=["queue"])
        try:
            for queue in (settings.queue, maintenance_queue(settings.queue)):
                depth.add_metric([queue], queue_depth(settings.broker_url, queue))
        except TaggerError as exc:
            log.warning("metrics_broker_unavailable", error=str(exc))
            broker_up.add_metric([], 0)
        else:
            broker_up.add_metric([], 1)
            yield depth
        yield broker_up
