# syntax=docker/dockerfile:1
# RunPod serverless worker for hpo: GPU TensorFlow, the hpo package, and every dataset baked into the image, so a
# job carries only names and numbers. Build and deploy with ./deploy.sh (linux/amd64).
#
#   docker buildx build --platform linux/amd64 -t REGISTRY/hpo-worker:TAG .
#   docker run --rm --gpus all REGISTRY/hpo-worker:TAG        # no RunPod environment: trains test_input.json once
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# The user's own model code (model=package.module:function): deploy.sh passes the folder HPO_USER_CODE as the named
# build context "usercode" (docker buildx build --build-context usercode=PATH); without it this empty stage is used.
FROM scratch AS usercode

FROM ${CUDA_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Python >= 3.10 (Ubuntu 24.04 ships 3.12) in a virtual environment, so pip does not touch the system's packages.
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN python3 -m venv "$VIRTUAL_ENV" && pip install --upgrade pip

# GPU TensorFlow first (its CUDA libraries come as wheels), in a layer of its own: it rarely changes.
ARG TENSORFLOW_SPEC="tensorflow[and-cuda]>=2.20,<2.22"
RUN pip install "${TENSORFLOW_SPEC}"

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY src/ src/
# the worker extra: the runpod SDK (its serverless loop); versions pinned as CI tests them
RUN pip install -c constraints.txt ".[worker]"

# Datasets into the image at build time (the Keras cache under /opt/hpo); --verify also extracts archives.
ENV KERAS_HOME=/opt/hpo/keras
ARG HPO_DATASETS="mnist fashion_mnist cifar10 cifar100 gtsrb imdb reuters"
# shellcheck disable=SC2086
RUN python -m hpo.prefetch --verify ${HPO_DATASETS}

COPY runpod_worker/ runpod_worker/
# own model code, importable by name on the worker (empty unless deploy.sh got HPO_USER_CODE)
COPY --from=usercode / /app/user_code/
ENV PYTHONPATH=/app/user_code

# One trial at a time per worker (bit-reproducible numbers); TensorFlow is imported before the first job is taken;
# the next job is asked for the moment one ends (not by the SDK's once-a-second look).
ENV HPO_WORKER_CONCURRENCY=1 \
    HPO_WORKER_WARMUP=1 \
    HPO_WORKER_PROMPT_TAKE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    RUNPOD_LOG_LEVEL=INFO

CMD ["python", "-u", "runpod_worker/handler.py"]
