# syntax=docker/dockerfile:1
# Images of repo-tagger; the entrypoint is `tagger`, the command a subcommand (`worker`, `beat`, ...).
#   cpu: every service but the GPU worker; llama.cpp and the bundled SmolLM2 GGUF for `worker-cpu`.
#   gpu: the GPU worker: vLLM (CUDA) serving MiniCPM4 in-process.
# docker compose builds both (see docker-compose.yml).

ARG PYTHON_VERSION=3.11
ARG VLLM_IMAGE=vllm/vllm-openai:v0.11.0

# --- build: compilers for llama-cpp-python, kept out of the runtime image -----------------------
FROM python:${PYTHON_VERSION}-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cli ./cli
COPY tagger ./tagger
COPY db ./db
COPY workers ./workers
COPY producer ./producer
COPY migrations ./migrations
COPY bench ./bench
RUN CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) pip install ".[llamacpp,openai]"

# --- cpu -----------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 tagger \
 && mkdir -p /models && chown tagger /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/models TAGGER_LOG_FORMAT=json
USER tagger
WORKDIR /home/tagger
ENTRYPOINT ["tagger"]
CMD ["--help"]

# --- gpu: vLLM's image brings CUDA, PyTorch and vLLM; we add the product on top --------------------
FROM ${VLLM_IMAGE} AS gpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cli ./cli
COPY tagger ./tagger
COPY db ./db
COPY workers ./workers
COPY producer ./producer
COPY migrations ./migrations
COPY bench ./bench
# The vllm extra is already satisfied by the base image: install the product and its plain deps only.
RUN pip install ".[openai]" \
 && useradd --create-home --uid 10001 tagger \
 && mkdir -p /models && chown tagger /models
ENV PYTHONUNBUFFERED=1 HF_HOME=/models TAGGER_LOG_FORMAT=json TAGGER_BACKEND=vllm
USER tagger
WORKDIR /home/tagger
ENTRYPOINT ["tagger"]
CMD ["worker", "--pool", "threads", "--concurrency", "2"]
