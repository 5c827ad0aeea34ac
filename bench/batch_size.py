"""Measurement 5, batch size: repos/s end to end against the batch size (repo ids per task message)
with the instant keyword backend, one worker; each size gets repos of its own, so every write is a
first write, as in production."""

from __future__ import annotations

from collections.abc import Sequence

from tagger.settings import Settings

from .overhead import PipelineRun, run_pipeline

QUICK_SIZES = (16, 64, 256)
FULL_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)


def sweep(settings: Settings, worker_pid: int, id_sets: Sequence[Sequence[str]], sizes: Sequence[int]
          ) -> list[PipelineRun]:
    return [run_pipeline(settings, worker_pid, ids, size) for ids, size in zip(id_sets, sizes, strict=True)]


def choose(runs: Sequence[PipelineRun], within: float = 0.9) -> int:
    """The smallest batch size within ``within`` of the best rate: smaller batches keep per-message
    latency, redelivery cost and a poisoned batch's blast radius down."""
    best = max(r.repos_per_s for r in runs)
    return min(r.batch_size for r in runs if r.repos_per_s >= within * best)
