# syntax=docker/dockerfile:1
# Two targets share one build: `cpu` (default, last stage) and `cuda` for NVIDIA hosts.
#   docker build -t ssl-embed .                 # CPU image
#   docker build --target cuda -t ssl-embed:cuda .

ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- dependencies: installed before the source is copied, so code edits reuse this layer
FROM ${PYTHON_IMAGE} AS deps-cpu
# The CPU build of torch comes from PyTorch's CPU wheel index; other packages from PyPI.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml requirements.lock /build/
WORKDIR /build
# One requirement per line, so that environment markers with spaces stay whole.
RUN python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > requirements.txt \
    && pip install --extra-index-url "${TORCH_INDEX_URL}" -c requirements.lock -r requirements.txt

FROM ${CUDA_IMAGE} AS deps-cuda
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml requirements.lock /build/
WORKDIR /build
# PyPI's torch 2.13.0 wheel for Linux x86_64 is the CUDA build.
RUN python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > requirements.txt \
    && pip install -c requirements.lock -r requirements.txt

# ---- the service: source, default models, a non-root user
FROM deps-cuda AS cuda
COPY training /build/training
COPY app /build/app
COPY README.md /build/
RUN pip install --no-deps /build && rm -rf /build
RUN useradd --create-home --uid 10001 embed && mkdir -p /srv/data && chown embed /srv/data
COPY --chown=embed models /srv/models
USER embed
WORKDIR /srv
ENV EMBED_HOST=0.0.0.0 EMBED_PORT=8000 EMBED_MODELS_DIR=/srv/models EMBED_DATA_DIR=/srv/data EMBED_DEVICE=cuda
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"EMBED_PORT\", \"8000\")}/readyz', timeout=4)"
ENTRYPOINT ["ssl-serve"]

FROM deps-cpu AS cpu
COPY training /build/training
COPY app /build/app
COPY README.md /build/
RUN pip install --no-deps /build && rm -rf /build
RUN useradd --create-home --uid 10001 embed && mkdir -p /srv/data && chown embed /srv/data
COPY --chown=embed models /srv/models
USER embed
WORKDIR /srv
ENV EMBED_HOST=0.0.0.0 EMBED_PORT=8000 EMBED_MODELS_DIR=/srv/models EMBED_DATA_DIR=/srv/data EMBED_DEVICE=cpu
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"EMBED_PORT\", \"8000\")}/readyz', timeout=4)"
ENTRYPOINT ["ssl-serve"]
