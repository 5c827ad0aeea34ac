"""`tagger eval`: tag quality of a backend, model and prompt configuration against a gold file."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from tqdm import tqdm

from cli.settings import settings_with
from tagger.backends import BACKENDS, configured_model, create_tagger
from tagger.calibration import PRIOR_ALPHA, Example, fit_report, format_calibration
from tagger.embeddings import SignalEmbedder
from tagger.engine import TaggingEngine, profile_label
from tagger.evaluation import curve, format_report, load_gold, policy_figures, predict, score, write_curve_plot
from tagger.keywords import synonyms_by_name
from tagger.scoring import FEATURES, POLICIES, PROFILES_DIR, Profile, Scorer, profile_name
from tagger.settings import Settings
from tagger.shortlist import SHORTLIST_MODES
from tagger.taxonomy import Taxonomy


@click.command("eval")
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
@click.option("--scoring", type=click.Choice(["auto", "on", "off"]),
              help="Scoring with the backend's calibration profile; off: the backend's answer as is "
              "[default: TAGGER_SCORING].")
@click.option("--policy", type=click.Choice(POLICIES),
              help="Tag policy of a scored backend [default: TAGGER_TAG_POLICY].")
@click.option("--threshold", type=click.FloatRange(0, 1),
              help="Your own threshold instead of the policy's [default: TAGGER_TAG_THRESHOLD].")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the precision/recall curve (against the threshold, the policies marked) as a PNG.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="READMEs per backend call.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the metrics and the configuration).")
def evaluate(gold_file: Path, backend: str | None, model: str | None, limit: int | None, budget: int | None,
             shortlist: str | None, shortlist_k: int | None, no_descriptions: bool, scoring: str | None,
             policy: str | None, threshold: float | None, plot_file: Path | None, batch_size: int,
             as_json: bool) -> None:
    """Tag every README of a gold file and report micro precision, recall and F1, hit rate, primary@3,
    the commonest mistakes and speed; with a scored backend, the precision/recall curve over the
    threshold, the policies marked (--plot FILE.png draws it). Touches neither the database nor the queue."""
    settings = settings_with(backend=backend, model=model, readme_token_budget=budget, shortlist=shortlist,
                             shortlist_k=shortlist_k, prompt_descriptions=False if no_descriptions else None,
                             scoring=scoring, tag_policy=policy, tag_threshold=threshold)
    taxonomy = Taxonomy.load(settings.taxonomy_file)
    rows = load_gold(gold_file, taxonomy, limit)

    started = time.perf_counter()
    tagger = create_tagger(settings)
    try:
        engine = TaggingEngine.from_settings(tagger, taxonomy, settings)
        load_s = time.perf_counter() - started
        ranked: list[list[tuple[str, float]]] = []
        with tqdm(total=len(rows), desc="tagging", unit="repo", file=sys.stderr, leave=False) as bar:
            predictions, failures, seconds = predict(engine, [r.readme for r in rows], batch_size=batch_size,
                                                     progress=bar.update, repo_names=[r.repo for r in rows],
                                                     ranked=ranked)
    finally:
        tagger.close()

    report = score(rows, predictions, errors=len(failures), seconds=seconds)
    profile = engine.scorer.profile if engine.scorer else None
    if profile is not None:
        report["policies"] = policy_figures(rows, ranked, profile)
        report["curve"] = curve(rows, ranked, profile.ratio, [p["threshold"] for p in report["policies"].values()])
        if plot_file is not None:
            write_curve_plot(report["curve"], report["policies"], plot_file,
                             f"{profile_label(profile)} on {gold_file.name} ({len(rows)} READMEs), ratio "
                             f"{profile.ratio:.2f}")
    elif plot_file is not None:
        raise click.UsageError("--plot needs a scored backend (its tags have scores to cut at a threshold)")
    report["load_s"] = round(load_s, 3)
    report["config"] = {
        "backend": tagger.name,
        "model": tagger.model,
        "prompt_version": engine.prompt_version,
        "descriptions": settings.prompt_descriptions,
        "shortlist": "none" if settings.shortlist == "none" or engine.scorer
        else f"{settings.shortlist}:{settings.shortlist_k}",
        "profile": profile_label(profile) if profile else "none",
        "policy": (profile.policy or "-") if profile else "none",
        "threshold": round(profile.threshold, 4) if profile else None,
        "budget": settings.readme_token_budget,
    }
    report["failures"] = failures[:10]
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False))
        return
    for line in format_report(report):
        click.echo(line)
    if plot_file is not None:
        click.echo(f"curve written to {plot_file}")
    for failure in failures[:5]:
        click.echo(f"failed: {failure}", err=True)


@click.command("calibrate")
@click.option("--gold", "gold_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='JSON Lines: {"repo", "readme", "gold": [tag names], "primary": tag} per line.')
@click.option("--backend", help=f"Backend to calibrate ({', '.join(BACKENDS)}) [default: TAGGER_BACKEND].")
@click.option("--model", help="Model for the backend [default: TAGGER_MODEL].")
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True,
              help="k of the k-fold cross-validation that estimates quality on unseen READMEs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split into folds.")
@click.option("--limit", type=click.IntRange(2), help="Calibrate on the first N READMEs only.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the profile to [default: TAGGER_PROFILES_DIR, else the shipped profiles].")
@click.option("--dry-run", is_flag=True, help="Print the report, write nothing.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="READMEs per backend call.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def calibrate(gold_file: Path, backend: str | None, model: str | None, folds: int, seed: int, limit: int | None,
              out_dir: Path | None, dry_run: bool, batch_size: int, as_json: bool) -> None:
    """Fit the scoring weights and threshold of a backend and model on labelled READMEs, report them
    with k-fold cross-validated figures, and store them as the profile that backend and model use.

    \b
    The backend's answer (its choice among each README's best candidates) is one signal among the
    others; its weight is fitted like theirs. The report gives the fit with and without it, so it
    shows whether the model adds anything. Profiles hold weights only, never READMEs or labels.
    A new profile changes the results' prompt version: `tagger enqueue --stale` re-tags.
    \b
    On a GPU, for example:
      tagger calibrate --gold dev.jsonl --backend vllm --model openbmb/MiniCPM4-8B
    """
    settings = settings_with(backend=backend, model=model)
    taxonomy = Taxonomy.load(settings.taxonomy_file)
    rows = load_gold(gold_file, taxonomy, limit)
    if len(rows) < folds:
        raise click.UsageError(f"{len(rows)} READMEs cannot make {folds} folds")
    judged = settings.backend != "signals"
    # A probe profile: every signal on, so the engine computes them all; its weights are not used.
    probe = Profile("probe", dict.fromkeys(FEATURES, 1.0), 0.0, 0.5)
    tagger = create_tagger(settings)
    try:
        engine = TaggingEngine.from_settings(tagger, taxonomy, settings.model_copy(update={"scoring": "off"}))
        engine.scorer = Scorer(taxonomy.names, probe, _embedder(taxonomy, settings))
        examples: list[Example] = []
        kept = []
        started = time.perf_counter()
        with tqdm(total=len(rows), desc="signals" + (" + judge" if judged else ""), unit="repo", file=sys.stderr,
                  leave=False) as bar:
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                gathered = engine.gather_signals([r.readme for r in batch], [r.repo for r in batch], judge=judged)
                for row, item in zip(batch, gathered, strict=True):
                    if isinstance(item, tuple):
                        examples.append(Example(item[0], frozenset(row.gold), row.primary, row.source))
                        kept.append(row.repo)
                    else:
                        click.echo(f"skipped {row.repo}: {type(item).__name__}: {item}", err=True)
                bar.update(len(batch))
        seconds = time.perf_counter() - started
        model_name = tagger.model if judged else configured_model(settings)
    finally:
        tagger.close()

    name = profile_name(settings.backend, model_name) if judged else settings.backend
    base = [f for f in FEATURES if f != "judge"]
    results = {"signals": fit_report(examples, taxonomy.names, base, folds, seed=seed, name=name,
                                     prior_alpha=PRIOR_ALPHA)}
    if judged:
        results["signals+judge"] = fit_report(examples, taxonomy.names, FEATURES, folds, seed=seed, name=name,
                                              prior_alpha=PRIOR_ALPHA)
    # The judge is kept only when it improves the cross-validated F1: a signal that adds nothing on
    # unseen READMEs would only cost a model call per README.
    chosen = "signals"
    if judged and results["signals+judge"][1]["cross_validated"]["f1"] > results["signals"][1]["cross_validated"]["f1"]:
        chosen = "signals+judge"
    profile, _ = results[chosen]
    summary = {
        "backend": settings.backend, "model": model_name, "readmes": len(examples), "folds": folds, "seed": seed,
        "seconds": round(seconds, 1), "readmes_per_s": round(len(examples) / seconds, 3) if seconds else None,
        "fits": {key: {**fit[1], "weights": fit[0].to_json()["weights"], "bias": round(fit[0].bias, 4),
                       "threshold": round(fit[0].threshold, 4)} for key, fit in results.items()},
        "sources": results[chosen][1]["sources"], "prior_alpha": PRIOR_ALPHA,
        "chosen": chosen, "profile": name, "profile_version": profile.version,
    }
    destination = (out_dir or settings.profiles_dir or PROFILES_DIR) / f"{name}.json"
    if not dry_run:
        profile.save(destination)
        summary["written"] = str(destination)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    for line in format_calibration(summary):
        click.echo(line)


def _embedder(taxonomy: Taxonomy, settings: Settings) -> SignalEmbedder:
    return SignalEmbedder(taxonomy, synonyms_by_name(), settings.embedding_model)
