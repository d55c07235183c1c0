# syntax=docker/dockerfile:1
# popscore images. Targets:
#   worker  (default) the stream worker: `popscore worker`, configured by POPSCORE_* environment variables
#   trainer           the offline trainer: `popscore train ...` (docker-compose profile `train`)
# Production installs only what runs there: no embedded broker or bundled tritonserver (extra `embedded`),
# no test tools. The model repository is mounted at /models at run time, never baked in.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/popscore \
    PATH=/opt/popscore/bin:$PATH
RUN python -m venv /opt/popscore \
    && groupadd --system --gid 10001 popscore \
    && useradd --system --uid 10001 --gid popscore --home-dir /var/lib/popscore --create-home popscore \
    && mkdir -p /models && chown popscore:popscore /models
WORKDIR /src
COPY pyproject.toml README.md ./
COPY popscore/ popscore/
COPY stream/ stream/
COPY serving/ serving/
COPY trainer/ trainer/
COPY tools/ tools/

FROM base AS trainer
RUN pip install ".[stream,serving,train]" \
    && popscore train --help > /dev/null
USER popscore
WORKDIR /var/lib/popscore
ENTRYPOINT ["popscore"]
CMD ["train", "--help"]

# The last stage is what `docker build .` produces.
FROM base AS worker
# Smoke check: the CLI must start with only the worker's extras installed (no pandas, no torch).
RUN pip install ".[stream,serving]" \
    && popscore --help > /dev/null \
    && python -c "import popscore.stream.app, popscore.serving.predictor"
USER popscore
WORKDIR /var/lib/popscore
ENV POPSCORE_STACK__HOST=0.0.0.0 \
    POPSCORE_STACK__RUN_DIR=/var/lib/popscore/run \
    POPSCORE_STACK__MODEL_REPO=/models
EXPOSE 6066 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('POPSCORE_WORKER__WEB_PORT', '6066'), timeout=4)"]
ENTRYPOINT ["popscore"]
CMD ["worker"]
