"""Measurement 1, pipeline overhead: synthetic repos through Redis + one `tagger worker` subprocess +
PostgreSQL with the instant keyword backend, against the raw rate of the very same multi-row writes
(results upsert + job-state upsert, one transaction per batch) into PostgreSQL with nothing else."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from db.configuration import Configuration
from db.engine import transaction
from db.jobs import mark_queued
from db.models import ResultRow
from db.repos import ReadmeRow
from db.results import ResultTotals, result_totals
from db.work import LIVE, Outcomes, record_outcomes
from producer.enqueue import enqueue_ids
from tagger.engine import Tagged
from tagger.readme import readme_hash
from tagger.settings import Settings
from tagger.taxonomy import Tag
from workers.batch import result_row

from . import proc_cpu_s, services_cpu_s, wait_for


@dataclass
class PipelineRun:
    repos: int
    batch_size: int
    wall_s: float
    worker_cpu_s: float
    backend_s: float
    producer_cpu_s: float
    services_cpu_s: float  # PostgreSQL and Redis

    @property
    def cpu_ms_per_repo(self) -> float:
        """Every process's CPU per repo: worker, producer, PostgreSQL, Redis."""
        return (self.worker_cpu_s + self.producer_cpu_s + self.services_cpu_s) * 1000 / self.repos

    @property
    def repos_per_s(self) -> float:
        return self.repos / self.wall_s

    @property
    def cpu_ms_outside_backend(self) -> float:
        return (self.worker_cpu_s - self.backend_s) * 1000 / self.repos


def totals(url: str) -> ResultTotals:
    with transaction(url) as conn:
        return result_totals(conn)


def wait_for_results(url: str, target: int, started: float, timeout: float, what: str) -> float:
    """Seconds from ``started`` (time.time()) until the ``target``-th result was written. The end is
    read from the results' own write time, so polling can be rare: each poll costs the 2 cores the
    pipeline is measured on."""
    wait_for(lambda: totals(url).count >= target, timeout, what, interval=0.25)
    last = totals(url).last_tagged_at
    assert last is not None  # there are results
    return last.timestamp() - started


def run_pipeline(settings: Settings, worker_pid: int, ids: Sequence[str], batch_size: int,
                 timeout: float = 900) -> PipelineRun:
    """Enqueue ``ids`` (in this process, as `tagger enqueue --file` would) while the worker drains;
    the clock stops when the last result is in PostgreSQL."""
    settings = settings.model_copy(update={"batch_size": batch_size})
    before = totals(settings.database_url)
    cpu_before, services_before = proc_cpu_s(worker_pid), services_cpu_s()
    started = time.time()
    producer_cpu = time.process_time()
    report = enqueue_ids(settings, ids)
    producer_cpu = time.process_time() - producer_cpu
    if report.sent != len(ids):
        raise RuntimeError(f"enqueued {report.sent} of {len(ids)} repos")
    wall = wait_for_results(settings.database_url, before.count + len(ids), started, timeout, f"{len(ids)} results")
    cpu, services = proc_cpu_s(worker_pid) - cpu_before, services_cpu_s() - services_before
    after = totals(settings.database_url)
    return PipelineRun(len(ids), batch_size, wall, cpu, (after.latency_ms - before.latency_ms) / 1000, producer_cpu,
                       services)


def result_rows(rows: Sequence[dict[str, str]]) -> list[ResultRow]:
    """What the worker would write for these repos (the keyword backend's configuration), built as the
    worker builds it."""
    configuration = Configuration("keyword", "keyword-v1", "p1d", 1)
    tagged = Tagged([Tag(4, "cli"), Tag(17, "ai")], json.dumps({"tags": ["cli", "ai"]}), 0.05, 0, 0)
    return [
        result_row(r["id"], tagged, ReadmeRow(r["id"], r["readme"], readme_hash(r["readme"]), 1, False), configuration)
        for r in rows
    ]


def run_raw(url: str, rows: Sequence[dict[str, Any]], batch_size: int) -> float:
    """Rows per second of the pipeline's writes alone: per batch, one transaction of the worker's write
    (results and job states). The jobs are marked queued first (untimed), as enqueueing does."""
    for start in range(0, len(rows), 5000):
        with transaction(url) as conn:
            mark_queued(conn, [r["repo_id"] for r in rows[start : start + 5000]])
    task_id = str(uuid.uuid4())
    started = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        with transaction(url) as conn:
            record_outcomes(conn, LIVE, Outcomes(results=list(batch)), task_id=task_id, run_id=None)
    return len(rows) / (time.perf_counter() - started)
