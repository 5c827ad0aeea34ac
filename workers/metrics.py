"""A worker process's own Prometheus counters and histograms: what it tagged, retried, dead-lettered,
how long its batches took, waited in the queue, and spent in the model per repo.

Counted where the work happens, so the figures stay right with any number of worker processes on any
number of hosts: Prometheus scrapes every worker (`TAGGER_WORKER_METRICS_PORT`) and sums with PromQL
(`sum(rate(tagger_repos_tagged_total[5m]))`). A restarted worker starts again from zero, which
`rate()` and `increase()` handle. The state of the whole pipeline (repos by state, queue depth) is the
exporter's (`tagger metrics`, producer/metrics.py): it comes from PostgreSQL and Redis, not from any
one process.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from db.configuration import Configuration
from tagger import __version__
from workers.contract import SENT_AT_HEADER

# What became of a batch: every repo tagged; some tagged, others retried or dead-lettered (partial);
# none tagged and some retried (retried); none tagged and some dead-lettered (dead_lettered); the batch
# itself failed and is retried or abandoned by Celery (failed); or refused (a canary's on a live worker).
BATCH_OUTCOMES = ("tagged", "partial", "retried", "dead_lettered", "failed", "refused")

# Batch wall time: from a few ms (keyword backend) to minutes (a big model on a long batch).
BATCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
PER_REPO_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600)



class WorkerMetrics:
    """The metrics of one worker process, in a registry of their own (what its /metrics serves)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.repos_tagged = Counter("tagger_repos_tagged", "Repos this worker tagged (results written).",
                                    ["backend", "model"], registry=r)
        self.retries = Counter("tagger_retries", "Repos this worker scheduled for another attempt.", registry=r)
        self.dead_letters = Counter("tagger_dead_letters", "Repos this worker dead-lettered (gave up on).",
                                    registry=r)
        self.batches = Counter("tagger_batches", "Batches this worker finished, by outcome.", ["outcome"],
                               registry=r)
        self.batch_duration = Histogram("tagger_batch_duration_seconds", "Wall time of one batch: read, tag, "
                                        "write.", buckets=BATCH_BUCKETS, registry=r)
        self.backend_seconds = Histogram("tagger_backend_seconds_per_repo", "Backend (model) time per repo: a "
                                         "batch's call shared evenly across its repos.", buckets=PER_REPO_BUCKETS,
                                         registry=r)
        self.queue_wait = Histogram("tagger_queue_wait_seconds", "Time a batch waited in the queue: from its "
                                    "sending (or its retry's due time) to a worker taking it.",
                                    buckets=QUEUE_WAIT_BUCKETS, registry=r)
        self.build_info = Gauge("tagger_build_info", "1, labelled with this worker's version and configuration.",
                                ["version", "backend", "model", "prompt_version", "taxonomy_version"], registry=r)
        for outcome in BATCH_OUTCOMES:  # every series exists from the start: increase() sees the first one
            self.batches.labels(outcome)

    def configured(self, configuration: Configuration) -> None:
        """The model is loaded: its configuration labels build_info and the tagged counter."""
        self.build_info.clear()
        self.build_info.labels(__version__, configuration.backend, configuration.model, configuration.prompt_version,
                               str(configuration.taxonomy_version)).set(1)
        self.repos_tagged.labels(configuration.backend, configuration.model)

    def batch_done(self, configuration: Configuration, *, tagged: int, retried: int, dead: int,
                   backend_s_per_repo: list[float], duration_s: float) -> None:
        self.repos_tagged.labels(configuration.backend, configuration.model).inc(tagged)
        self.retries.inc(retried)
        self.dead_letters.inc(dead)
        for seconds in backend_s_per_repo:
            self.backend_seconds.observe(seconds)
        self.batch_duration.observe(duration_s)
        self.batches.labels(batch_outcome(tagged, retried, dead)).inc()

    def batch_failed(self, duration_s: float, *, refused: bool = False) -> None:
        self.batch_duration.observe(duration_s)
        self.batches.labels("refused" if refused else "failed").inc()

    def taken(self, request: Any, now: float | None = None) -> None:
        """A worker took a message: how long it waited, if the message says when it was sent."""
        waited = queue_wait_s(request, time.time() if now is None else now)
        if waited is not None:
            self.queue_wait.observe(waited)


def batch_outcome(tagged: int, retried: int, dead: int) -> str:
    if not retried and not dead:
        return "tagged"
    if tagged:
        return "partial"
    return "dead_lettered" if dead else "retried"


def queue_wait_s(request: Any, now: float) -> float | None:
    """Seconds between a message's sending, or its due time for a delayed retry (eta), and ``now``;
    None for a message without the producer's stamp (sent by an older version)."""
    sent = _get(request, SENT_AT_HEADER)
    try:
        start = float(sent) if sent is not None else None
    except (TypeError, ValueError):
        start = None
    eta = _get(request, "eta")
    if eta:
        try:
            due = datetime.fromisoformat(str(eta)).timestamp()
        except ValueError:
            due = None
        if due is not None:
            start = max(start, due) if start is not None else due
    return None if start is None else max(0.0, now - start)


def _get(request: Any, key: str) -> Any:
    value = getattr(request, key, None)
    if value is None:
        headers = getattr(request, "headers", None) or {}
        value = headers.get(key) if isinstance(headers, Mapping) else None
    return value
