"""`tagger bench`: the benchmark suite (bench/), one table, BENCHMARKS.md-ready rows, or one JSON object."""

from __future__ import annotations

import sys
from dataclasses import replace

import click

from bench import suite
from cli.settings import settings_with
from tagger.files import atomic_write


@click.command()
@click.option("--quick", is_flag=True, help="Smaller sizes (under two minutes on 2 cores) instead of the full run "
              "(20,000 repos, 1,000,000 ids enqueued, 64 READMEs through the model).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of the figures instead of the table.")
@click.option("--no-model", is_flag=True, help="Skip the model paths, llamacpp and vllm (and prefix-reuse figures).")
@click.option("--only", multiple=True, type=click.Choice([b.name for b in suite.BENCHMARKS]),
              help="Run only these benchmarks (repeat the option); e.g. --only model --only vllm puts both "
              "engines side by side on the same READMEs.")
@click.option("--model-readmes", type=click.IntRange(1), help="READMEs through the model path [64; --quick: 4].")
@click.option("--repos", type=click.IntRange(1000), help="Repos in the index benchmark's index [1,000,000; --quick: "
              "100,000].")
@click.option("--workers", "fleet_workers", help="Fleet sizes, comma-separated [1,2,4,8,16,32; --quick: 1,2,4,8].")
def bench(quick: bool, as_json: bool, no_model: bool, only: tuple[str, ...], model_readmes: int | None,
          repos: int | None, fleet_workers: str | None) -> None:
    """Measure the pipeline: overhead vs raw upserts, model path vs bare llama.cpp, prefix reuse, scale,
    batch size, the vLLM model path vs bare LLM.chat, and the GPU estimate. On request (--only): every
    operator command against a whole index (index), and a simulated GPU fleet (fleet).

    Uses TAGGER_DATABASE_URL's server (creating and dropping a tagger_bench_* database) and private
    redis-server processes on free ports. Writes the table's rows to bench/out/BENCHMARKS-rows.md
    and the figures to bench/out/results.json.
    """
    plan = suite.QUICK if quick else suite.FULL
    if model_readmes:
        plan = replace(plan, model_readmes=model_readmes)
    if repos:
        plan = replace(plan, index_repos=repos)
    if fleet_workers:
        try:
            plan = replace(plan, fleet_workers=tuple(int(k) for k in fleet_workers.split(",")))
        except ValueError:
            raise click.BadParameter("comma-separated worker counts, e.g. 1,4,16", param_hint="--workers") from None

    def say(message: str) -> None:
        click.echo(f"bench: {message}", err=True)

    report = suite.run(settings_with(), plan, model=not no_model, only=only, say=say)
    suite.OUT_DIR.mkdir(parents=True, exist_ok=True)
    rows_file = suite.OUT_DIR / "BENCHMARKS-rows.md"
    # Whole or not at all: a bench run interrupted while writing keeps the previous run's files.
    with atomic_write(rows_file) as stream:
        stream.write(suite.markdown(report))
    with atomic_write(suite.OUT_DIR / "results.json") as stream:
        stream.write(suite.as_json(report) + "\n")
    if as_json:
        click.echo(suite.as_json(report))
    else:
        click.echo(suite.table(report))
        click.echo(f"\n{report.figures['mode']} run, {report.figures['elapsed_s']} s; rows for BENCHMARKS.md: "
                   f"{rows_file}", err=True)
    sys.stdout.flush()
