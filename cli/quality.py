"""`tagger eval`: tag quality of a backend, model and prompt configuration against a gold file."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from tqdm import tqdm

from cli.base import cli, settings_with
from tagger.backends import BACKENDS, create_tagger
from tagger.engine import TaggingEngine
from tagger.evaluation import format_report, load_gold, predict, score
from tagger.shortlist import SHORTLIST_MODES
from tagger.taxonomy import Taxonomy


@cli.command("eval")
@click.option("--gold", "gold_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='JSON Lines: {"repo", "readme", "gold": [tag names], "primary": tag} per line.')
@click.option("--backend", help=f"Backend to evaluate ({', '.join(BACKENDS)}) [default: TAGGER_BACKEND].")
@click.option("--model", help="Model for the backend [default: TAGGER_MODEL].")
@click.option("--limit", type=click.IntRange(1), help="Evaluate the first N READMEs only.")
@click.option("--budget", type=click.IntRange(16), help="README tokens kept [default: TAGGER_README_TOKEN_BUDGET].")
@click.option("--shortlist", type=click.Choice(SHORTLIST_MODES),
              help="Candidate shortlist before the model [default: TAGGER_SHORTLIST].")
@click.option("--shortlist-k", type=click.IntRange(1), help="Shortlist size [default: TAGGER_SHORTLIST_K].")
@click.option("--no-descriptions", is_flag=True, help="Leave the tag descriptions out of the prompt.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="READMEs per backend call.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the metrics and the configuration).")
def evaluate(gold_file: Path, backend: str | None, model: str | None, limit: int | None, budget: int | None,
             shortlist: str | None, shortlist_k: int | None, no_descriptions: bool, batch_size: int,
             as_json: bool) -> None:
    """Tag every README of a gold file and report micro precision, recall and F1, hit rate, primary@3,
    the commonest mistakes and speed. Touches neither the database nor the queue."""
    settings = settings_with(backend=backend, model=model, readme_token_budget=budget, shortlist=shortlist,
                             shortlist_k=shortlist_k, prompt_descriptions=False if no_descriptions else None)
    taxonomy = Taxonomy.load(settings.taxonomy_file)
    rows = load_gold(gold_file, taxonomy, limit)

    started = time.perf_counter()
    tagger = create_tagger(settings)
    try:
        engine = TaggingEngine.from_settings(tagger, taxonomy, settings)
        load_s = time.perf_counter() - started
        with tqdm(total=len(rows), desc="tagging", unit="repo", file=sys.stderr, leave=False) as bar:
            predictions, failures, seconds = predict(engine, [r.readme for r in rows], batch_size=batch_size,
                                                     progress=bar.update)
    finally:
        tagger.close()

    report = score(rows, predictions, errors=len(failures), seconds=seconds)
    report["load_s"] = round(load_s, 3)
    report["config"] = {
        "backend": tagger.name,
        "model": tagger.model,
        "prompt_version": engine.prompt_version,
        "descriptions": settings.prompt_descriptions,
        "shortlist": "none" if settings.shortlist == "none" else f"{settings.shortlist}:{settings.shortlist_k}",
        "budget": settings.readme_token_budget,
    }
    report["failures"] = failures[:10]
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False))
        return
    for line in format_report(report):
        click.echo(line)
    for failure in failures[:5]:
        click.echo(f"failed: {failure}", err=True)
