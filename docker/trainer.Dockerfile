# The trainer: trains every step, exports each to ONNX and publishes it into the model volume.
#
#   docker build -f docker/trainer.Dockerfile -t mnist-steps-trainer .          # from the repo root
#   docker run --rm --gpus all -v mnist-models:/models mnist-steps-trainer      # on the GPU
#   docker run --rm -v mnist-models:/models mnist-steps-trainer                 # on the CPU
#
# Base: NVIDIA's CUDA 13.0 "base" image, the CUDA line of torch 2.14.1's Linux wheel (+cu130).
# That wheel brings its own CUDA runtime, cuBLAS, cuDNN and NCCL (the nvidia-* wheels pip
# installs with it), so nothing more of CUDA is needed than "base" has (a -runtime or -cudnn
# image would only add a second copy). The host needs an NVIDIA driver >= 580 and the NVIDIA
# Container Toolkit; without a GPU torch sees none and the trainer logs "device: cpu (...)".
#
# Offline builds (no registry, no PyPI; see tests/docker/e2e.sh) override the base with
# `--build-arg BASE_IMAGE=<an image with python3 and python3-venv>` and point pip at a wheel
# folder: `--build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=http://127.0.0.1:PORT/`.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04
FROM ${BASE_IMAGE}

# Where pip finds packages (pip reads PIP_* from the environment; build args are environment).
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_FIND_LINKS=
ARG PIP_NO_INDEX=0
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python with venv: the CUDA image has none (Ubuntu 24.04's python3 is 3.12); a base that already
# has it (the offline stand-in) skips apt.
# DL3008: not pinning apt versions: Ubuntu's archive drops superseded versions, so a pin breaks
# the build within weeks; the base image tag pins the release.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /models /cache/mnist \
    && chown app:app /models /cache /cache/mnist
ENV PATH=/opt/venv/bin:$PATH

# torch alone, first: gigabytes that change only with this pin, so a code change rebuilds in
# seconds. These exact builds, as pyproject.toml's `train` extra pins them. Byte-compiled on
# every core afterwards (pip compiles one file at a time); like pip, this skips the few files
# that are not valid for this Python (torch ships a py312-only test file).
RUN pip install --no-compile torch==2.14.1 torchvision==0.29.1 \
    && python -c "import compileall; compileall.compile_dir('/opt/venv/lib', quiet=2, workers=0)"

# The trainer, installed as a package with its `train` extra (not run from a source tree).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY volume/ volume/
COPY trainer/ trainer/
# DL3013: "." is this project: its dependencies are declared in pyproject.toml, torch pinned.
# hadolint ignore=DL3013
RUN pip install ".[train]" torch==2.14.1 torchvision==0.29.1 \
    && python -c "import torch, torchvision, trainer; print('torch', torch.__version__)"

# The same uid (10001) as the service image: the trainer writes the model volume, the service
# reads it. The named volumes take /models' and /cache's owner the first time they are mounted.
# Numeric, so that a runtime enforcing runAsNonRoot can tell it is not root.
USER 10001:10001
WORKDIR /home/app
ENV MODELS_DIR=/models \
    MNIST_CACHE=/cache/mnist

ENTRYPOINT ["python", "-m", "trainer"]
# --resume: a run killed (a reboot, an OOM kill, Ctrl-C) goes on from each step's last completed
# epoch, and steps already published from this recipe, code and data are skipped.
CMD ["run", "--steps", "all", "--device", "auto", "--resume"]
