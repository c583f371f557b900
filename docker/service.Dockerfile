# The service: FastAPI + onnxruntime serving the model volume read-only. No torch.
#
#   docker build -f docker/service.Dockerfile -t mnist-steps-service .          # from the repo root
#   docker run --rm -p 127.0.0.1:8000:8000 -v mnist-models:/models:ro mnist-steps-service
#
# It runs `python -m service` (service/server.py), the service's launcher: uvicorn with limits on
# slow and lying clients.
#
# Two stages: `build` makes a venv holding the service and its dependencies (pip, setuptools and
# the build of the project stay there); the final stage copies only that venv onto a clean base.
# Both stages use the same BASE_IMAGE, so the venv's python path is the same in both.
#
# Offline builds (no registry, no PyPI; see tests/docker/e2e.sh) override the base with
# `--build-arg BASE_IMAGE=<an image with python3 and python3-venv>` and point pip at a wheel
# folder: `--build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=http://127.0.0.1:PORT/`.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Where pip finds packages (pip reads PIP_* from the environment; build args are environment).
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_FIND_LINKS=
ARG PIP_NO_INDEX=0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY volume/ volume/
COPY service/ service/
# DL3013: "." is this project: its dependencies are declared in pyproject.toml.
# dumb-init (a static binary in a wheel) runs as PID 1: it forwards SIGTERM/SIGINT to the service and
# reaps zombies, so `docker stop` is a graceful shutdown instead of a SIGKILL after 10 s.
# hadolint ignore=DL3013
RUN /opt/venv/bin/pip install ".[serve]" dumb-init==1.2.5.post1 \
    && /opt/venv/bin/python -c "import service.app" \
    && /opt/venv/bin/pip uninstall -y pip setuptools

FROM ${BASE_IMAGE}
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app \
    && mkdir -p /models \
    && chown app:app /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MODELS_DIR=/models
# The same uid (10001) as the trainer image, which writes the model volume. Numeric, so that a
# runtime enforcing runAsNonRoot can tell it is not root.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# Liveness only: /healthz answers while no model is published yet (/readyz says 503 then), so
# the service can start before the trainer. No curl in a slim image: python's urllib does it.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["dumb-init", "--"]
# The launcher (service/__main__.py): one uvicorn worker per core the container may use, on
# SO_REUSEPORT sockets, each with deadlines for slow clients' headers and bodies and caps on
# connections and requests in flight (service/server.py, service/limits.py).
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "20"]
