#!/usr/bin/env bash
# Build both images under the names docker-compose.yml runs, so that every `docker compose`
# command of docs/docker.md finds them (Compose builds nothing once an image is there).
#
#   make images                  # or: bash docker/build-images.sh
#   make images OFFLINE=1        # an engine that reaches no image registry (and no PyPI inside builds)
#
# Online: `docker build` of docker/service.Dockerfile and docker/trainer.Dockerfile from their
# official bases (python:3.11-slim-bookworm, nvidia/cuda:13.0.1-base-ubuntu24.04), pip from PyPI.
#
# OFFLINE=1, where no `FROM` can be pulled and pip inside a build reaches nothing:
#  1. a Debian bookworm base with python3 made with debootstrap (docker/build-base.sh; from
#     Debian's apt mirror, kept for next time);
#  2. every wheel both images need downloaded on the host into ./wheels (once, about 3 GB: torch
#     and its CUDA libraries) and served on a free port of 127.0.0.1 while the builds run;
#  3. both builds on that base with `--network host` (to reach that port) and pip told to use
#     nothing but it (PIP_NO_INDEX=1, PIP_FIND_LINKS).
#
# Tags: $TRAINER_IMAGE and $SERVICE_IMAGE when set (Compose reads the same variables), else the
# defaults docker-compose.yml names (mnist-steps-trainer:latest, mnist-steps-service:latest).
# A rebuild after a code change takes seconds: torch's layer stays cached.
# Knobs: OFFLINE=1, BASE_IMAGE (offline base, mnist-steps-base:bookworm), WHEELS (./wheels),
# PYTHON (the host's python with pip, for the download: .venv/bin/python, else python3).
# Needs docker; offline also debootstrap (root) and a host python >= 3.11 with pip.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

# The image names: the defaults live in docker-compose.yml (`${TRAINER_IMAGE:-...}`).
default_image() { sed -n "s/.*\${$1:-\([^}]*\)}.*/\1/p" docker-compose.yml | head -n 1; }
TRAINER_IMAGE="${TRAINER_IMAGE:-$(default_image TRAINER_IMAGE)}"
SERVICE_IMAGE="${SERVICE_IMAGE:-$(default_image SERVICE_IMAGE)}"
[[ -n "$TRAINER_IMAGE" && -n "$SERVICE_IMAGE" ]] || { echo "images: no image names in docker-compose.yml" >&2; exit 1; }
OFFLINE="${OFFLINE:-0}"
BASE_IMAGE="${BASE_IMAGE:-mnist-steps-base:bookworm}"
WHEELS="${WHEELS:-$ROOT/wheels}"
PY="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
# The classic builder: in every engine, with no buildx plugin (BuildKit is as welcome: the
# Dockerfiles need nothing of either).
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}"

start=$SECONDS
timeout 20 docker info >/dev/null 2>&1 || {
  echo "images: no Docker engine answers (start it: systemctl start docker, or dockerd)" >&2
  exit 1
}

build_args=()
wheel_server=""
trap '[[ -n "$wheel_server" ]] && kill "$wheel_server" 2>/dev/null; true' EXIT

if [[ "$OFFLINE" == 1 ]]; then
  bash docker/build-base.sh "$BASE_IMAGE"
  pyver="$(docker run --rm --network none "$BASE_IMAGE" python3 -c \
    'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  "$PY" -m pip --version >/dev/null 2>&1 ||
    { echo "images: OFFLINE=1 downloads the wheels with $PY's pip: install pip (apt-get install python3-pip) or set PYTHON" >&2; exit 1; }
  # Every requirement of pyproject.toml's dependencies, its serve and train extras and its build
  # backend, and what the Dockerfiles pin themselves; for the base image's Python and platform.
  mapfile -t reqs < <("$PY" - <<'EOF'
import re, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))
reqs = list(p["project"]["dependencies"]) + p["build-system"]["requires"]
for extra in ("serve", "train"):
    reqs += p["project"]["optional-dependencies"][extra]
for f in ("docker/trainer.Dockerfile", "docker/service.Dockerfile"):
    reqs += re.findall(r"[\s\"]([A-Za-z0-9_.-]+==[0-9][^\s\"\\]*)", open(f).read())
print("\n".join(sorted(set(reqs))))
EOF
  )
  mkdir -p "$WHEELS"
  stamp="$(printf '%s\n' "python $pyver" "${reqs[@]}")"
  if [[ -f "$WHEELS/.requirements" && "$(cat "$WHEELS/.requirements")" == "$stamp" ]]; then
    echo "images: $WHEELS already holds these requirements' wheels ($(du -sh "$WHEELS" | cut -f1))"
  else
    wheels_start=$SECONDS
    platforms=()
    for minor in $(seq 40 -1 5); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
    platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
    target=(--only-binary=:all: "${platforms[@]}" --implementation cp --python-version "$pyver" --abi "cp${pyver/./}")
    timeout 1200 "$PY" -m pip download -q --disable-pip-version-check -d "$WHEELS" "${target[@]}" \
      "${reqs[@]}" 2>&1 | grep -v "is ignored" || true
    # The same again with no index: it fails unless the folder alone satisfies every requirement.
    "$PY" -m pip download -q --disable-pip-version-check -d "$WHEELS" --no-index --find-links "$WHEELS" \
      "${target[@]}" "${reqs[@]}" >/dev/null 2>&1 || { echo "images: pip download left $WHEELS incomplete" >&2; exit 1; }
    printf '%s\n' "$stamp" >"$WHEELS/.requirements"
    echo "images: $WHEELS: $(find "$WHEELS" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1), in $((SECONDS - wheels_start)) s"
  fi
  port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "$PY" -m http.server --bind 127.0.0.1 --directory "$WHEELS" "$port" >/dev/null 2>&1 &
  wheel_server=$!
  for _ in $(seq 50); do
    "$PY" -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=1)' "http://127.0.0.1:$port/" 2>/dev/null && break
    sleep 0.2
  done
  build_args=(--network host --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg PIP_NO_INDEX=1
    --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/")
fi

build() { # build DOCKERFILE TAG
  local t=$SECONDS log
  log="$(mktemp)"
  echo "images: building $2 from $1 ..."
  if ! timeout 1800 docker build --force-rm "${build_args[@]}" -f "$1" -t "$2" . >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    rm -f "$log"
    if [[ "$OFFLINE" != 1 ]] && ! docker image inspect "$(sed -n 's/^ARG BASE_IMAGE=//p' "$1")" >/dev/null 2>&1; then
      echo "images: could the base image be pulled? Where no registry is reachable: make images OFFLINE=1" >&2
    fi
    exit 1
  fi
  rm -f "$log"
  echo "images: built $2 ($(docker image inspect -f '{{.Size}}' "$2" | awk '{printf "%.1f GB", $1 / 1e9}')) in $((SECONDS - t)) s"
}
build docker/service.Dockerfile "$SERVICE_IMAGE"
build docker/trainer.Dockerfile "$TRAINER_IMAGE"
echo "images: $SERVICE_IMAGE and $TRAINER_IMAGE ready in $((SECONDS - start)) s; next: docker compose up -d service"
