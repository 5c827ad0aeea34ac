"""The pure parts of the index and fleet benchmarks: the fleet's arithmetic, the sleeping model's
configuration, and the bulk loader's COPY lines."""

from __future__ import annotations

import math
import re

import pytest

from bench.bulk import IndexShape, readme_pool, repo_id, repo_lines
from bench.fleet import (
    BATCH,
    GPU_REPOS_PER_S,
    FleetPoint,
    SleepingGPU,
    efficiency,
    factory,
    ideal_repos_per_s,
    repos_for,
    steady_rate,
    workers_per_core,
)
from tagger.readme import readme_hash
from tagger.settings import Settings


def test_ideal_is_k_workers_at_the_gpu_rate_and_efficiency_a_fraction_of_it():
    assert ideal_repos_per_s(16) == 16 * GPU_REPOS_PER_S
    assert efficiency(5316, 32) == pytest.approx(5316 / (32 * 170))
    assert efficiency(170, 1) == 1.0


def test_workers_per_core_at_a_cost_per_repo():
    # 0.06 ms a repo at 170 repos/s: 10.2 ms of CPU a second per worker, 98 workers a core.
    assert workers_per_core(0.06) == pytest.approx(1000 / (0.06 * 170))
    assert workers_per_core(1000 / 170 / 100) == pytest.approx(100)
    assert math.isinf(workers_per_core(0.0))


def test_repos_for_a_point_are_whole_batches_at_least_one_per_worker():
    assert repos_for(4, 10) % BATCH == 0
    assert repos_for(4, 10) >= 4 * 170 * 10
    assert repos_for(32, 0.001) == 32 * BATCH


def test_a_point_reports_rate_efficiency_and_cost_per_repo():
    point = FleetPoint(workers=2, repos=3400, window_s=10.0, pg_cpu_s=0.17, redis_cpu_s=0.034, pg_all_cpu_s=0.2,
                       workers_cpu_s=1.0, load=1.0)
    assert point.repos_per_s == 340
    assert point.efficiency == 1.0
    assert point.ms_per_repo(point.pg_cpu_s + point.redis_cpu_s) == pytest.approx(0.06)
    assert math.isnan(FleetPoint(1, 0, 1.0, 0, 0, 0, 0, 0).ms_per_repo(1.0))


def test_the_sleeping_model_reads_its_rate_from_the_model_name_and_answers_every_prompt():
    assert factory(Settings(backend="bench.fleet:factory", model="gpu-sleep@1e6")).repos_per_s == 1e6
    assert factory(Settings(backend="bench.fleet:factory")).repos_per_s == GPU_REPOS_PER_S
    answers = SleepingGPU(1e9).generate([None] * 3)  # type: ignore[list-item]
    assert len(answers) == 3


def test_copy_lines_escape_the_readme_and_carry_its_hash():
    shape = IndexShape(5, prefix="t", readme_pool=2, readme_bytes=300)
    pool = readme_pool(shape)
    lines = list(repo_lines(shape, pool))
    assert len(lines) == 5
    for i, line in enumerate(lines):
        assert line.endswith("\n") and line.count("\n") == 1
        rid, name, readme, digest = line.rstrip("\n").split("\t")
        assert rid == repo_id("t", i) and name == f"bench/{rid}"
        text = re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), readme)
        assert text == pool[i % 2] + f"\nRepo {rid}.\n"
        assert digest == readme_hash(text)
    assert len({line.split("\t")[3] for line in lines}) == 5


def test_the_steady_rate_counts_every_batch_after_the_first_over_the_span_of_their_writes():
    one_worker = [(10.0 + i * 128 / 170, 128) for i in range(8)]
    assert steady_rate(one_worker) == pytest.approx(170)
    two_workers = sorted(one_worker + [(t + 0.3, n) for t, n in one_worker])
    assert steady_rate(two_workers) == pytest.approx(15 * 128 / (two_workers[-1][0] - two_workers[0][0]))
    assert steady_rate([(1.0, 128)]) == 0.0
    assert steady_rate([]) == 0.0
