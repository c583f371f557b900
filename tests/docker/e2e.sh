#!/usr/bin/env bash
# Prove both images and docker-compose.yml on a real Docker engine, offline:
#
#   make docker-e2e          (or: bash tests/docker/e2e.sh)
#
#  1. starts dockerd if none answers (and apt-installs docker.io, docker-compose, debootstrap if
#     they are missing and this runs as root);
#  2. builds a stand-in base image with debootstrap + `docker import` (docker/build-base.sh),
#     because no registry is reachable here, so no `FROM` can be pulled; it is kept for next time;
#  3. downloads the wheels both images need into ./wheels on the host (once) and serves them on
#     127.0.0.1, because pip inside a build cannot reach the package index;
#  4. builds docker/service.Dockerfile and docker/trainer.Dockerfile on that base;
#  5. with docker-compose.yml (+ tests/docker/compose.e2e.yml: offline, tiny subset):
#     starts the service on the empty model volume (live, not ready), runs the CPU trainer on a
#     tiny MNIST subset into the volume, waits until the service picks the models up without a
#     restart, POSTs a PNG to /predict/gap and /predict/scheduler, reads /steps/gap/summary,
#     checks the service's user, PID 1, read-only volume and loopback-only port, and stops it
#     gracefully;
#  5b. with docker-compose.replicas.yml on top: REPLICAS replicas behind nginx (a stand-in built
#     from Debian's nginx, docker/build-nginx.sh), under steady load kills one, publishes, starts
#     it again and publishes again: no request may fail (tests/docker/replicas.sh;
#     E2E_REPLICAS=0 skips it);
#  6. removes the containers, network, volumes and the two images it built (E2E_KEEP_IMAGES=1
#     keeps the images; the base image and ./wheels are kept to make the next run faster).
#
# Containers talk to nothing but 127.0.0.1 and each other: the builds fetch wheels from the
# loopback server only (PIP_NO_INDEX=1), the trainer runs with no network, the service's port is
# published on 127.0.0.1 only. Every wait is bounded.
#
# Knobs (environment): E2E_STEPS (gap,scheduler), E2E_LIMIT (1000 images), E2E_KEEP_IMAGES=1,
# E2E_REPLICAS (1: run 5b), E2E_REPLICAS_N (3), E2E_LOAD_RATE (100 requests/s), E2E_NGINX_IMAGE,
# E2E_BASE_IMAGE (mnist-steps-base:bookworm), E2E_WHEELS (./wheels), E2E_WHEEL_PORT (18787),
# E2E_PROJECT (mnist-steps-e2e), MNIST_DIR (the host's four IDX files), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

PROJECT="${E2E_PROJECT:-mnist-steps-e2e}"
BASE_IMAGE="${E2E_BASE_IMAGE:-mnist-steps-base:bookworm}"
export NGINX_IMAGE="${E2E_NGINX_IMAGE:-mnist-steps-nginx:bookworm}"
WHEELS="${E2E_WHEELS:-$ROOT/wheels}"
WHEEL_PORT="${E2E_WHEEL_PORT:-18787}"
export TRAINER_IMAGE="${PROJECT}-trainer:e2e"
export SERVICE_IMAGE="${PROJECT}-service:e2e"
export SERVICE_BIND=127.0.0.1
export E2E_STEPS="${E2E_STEPS:-gap,scheduler}"
export E2E_LIMIT="${E2E_LIMIT:-1000}"
PY="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
DOCKER=(docker)
export DOCKER_BUILDKIT=0 # the classic builder: in every engine, and it needs no buildx plugin

t0=$SECONDS
phase_start=$SECONDS
timings=()
say() { printf '\n=== e2e [%3ds] %s\n' "$((SECONDS - t0))" "$*"; }
phase() { # phase NAME: close the previous phase's timer, start this one
  if [[ -n "${phase_name:-}" ]]; then timings+=("$(printf '%-34s %4d s' "$phase_name" "$((SECONDS - phase_start))")"); fi
  phase_name="$1"
  phase_start=$SECONDS
  say "$1"
}
fail() { echo "e2e: FAIL: $*" >&2; exit 1; }

# --- 1. tools and engine ------------------------------------------------------------------
phase "tools and engine"
missing=()
command -v docker >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
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
if command -v docker-compose >/dev/null; then COMPOSE_BIN=(docker-compose); else COMPOSE_BIN=(docker compose); fi

if ! timeout 20 "${DOCKER[@]}" info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || fail "no Docker engine answers and there is no dockerd to start"
  echo "starting dockerd (log: /tmp/dockerd.log)"
  setsid dockerd >/tmp/dockerd.log 2>&1 </dev/null &
  for _ in $(seq 60); do timeout 5 "${DOCKER[@]}" info >/dev/null 2>&1 && break; sleep 1; done
  timeout 5 "${DOCKER[@]}" info >/dev/null 2>&1 || { tail -20 /tmp/dockerd.log >&2; fail "dockerd did not come up in 60 s"; }
fi
"${DOCKER[@]}" version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'
"${COMPOSE_BIN[@]}" version | sed -n 1p

MNIST="${MNIST_DIR:-$ROOT/../shared/datasets/mnist}"
[[ -f "$MNIST/t10k-images-idx3-ubyte.gz" || -f "$MNIST/t10k-images-idx3-ubyte" ]] ||
  fail "no MNIST IDX files in $MNIST: set MNIST_DIR"
export E2E_MNIST_DIR
E2E_MNIST_DIR="$(cd "$MNIST" && pwd)"

COMPOSE=("${COMPOSE_BIN[@]}" -p "$PROJECT" -f docker-compose.yml -f tests/docker/compose.e2e.yml --profile cpu)
compose() { "${COMPOSE[@]}" "$@"; }

tmp="$(mktemp -d /tmp/mnist-steps-e2e.XXXXXX)"
wheel_server=""
cleanup() {
  local rc=$?
  set +e
  if ((rc != 0)); then
    echo "--- compose ps / logs (the run failed) ---" >&2
    compose ps >&2
    compose logs --no-color --tail 60 >&2
  fi
  phase "clean up"
  compose down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1
  [[ -n "$wheel_server" ]] && kill "$wheel_server" 2>/dev/null
  if [[ "${E2E_KEEP_IMAGES:-0}" != 1 ]]; then
    "${DOCKER[@]}" image rm "$TRAINER_IMAGE" "$SERVICE_IMAGE" >/dev/null 2>&1
    # The service's build stage is no ancestor of its image: remove what it left untagged.
    for id in $("${DOCKER[@]}" image ls -q --no-trunc --filter dangling=true); do
      grep -qxF "$id" <<<"${images_before:-}" || "${DOCKER[@]}" image rm "$id" >/dev/null 2>&1
    done
  fi
  rm -rf "$tmp"
  left="$("${DOCKER[@]}" ps -a --filter "label=com.docker.compose.project=$PROJECT" -q)"
  left+="$("${DOCKER[@]}" volume ls --filter "label=com.docker.compose.project=$PROJECT" -q)"
  [[ -z "$left" ]] || echo "e2e: WARNING: left behind: $left" >&2
  if [[ -n "${phase_name:-}" ]]; then timings+=("$(printf '%-34s %4d s' "$phase_name" "$((SECONDS - phase_start))")"); fi
  printf '\n=== e2e timings\n'
  printf '  %s\n' "${timings[@]}"
  printf '  %-34s %4d s\n' "total" "$((SECONDS - t0))"
  if ((rc == 0)); then echo "e2e: PASS"; else echo "e2e: FAIL (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Leftovers of an earlier run that was killed.
compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true

# --- 2. the stand-in base image -----------------------------------------------------------
phase "base image (debootstrap)"
DOCKER="${DOCKER[0]}" bash docker/build-base.sh "$BASE_IMAGE"
pyver="$("${DOCKER[@]}" run --rm --network none "$BASE_IMAGE" python3 -c \
  'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
echo "base image python: $pyver"
if [[ "${E2E_REPLICAS:-1}" == 1 ]]; then
  phase "nginx stand-in (debootstrap)"
  DOCKER="${DOCKER[0]}" bash docker/build-nginx.sh "$NGINX_IMAGE"
fi

# --- 3. wheels on the host, served on 127.0.0.1 --------------------------------------------
phase "wheels (pip download on the host)"
# Every requirement of pyproject.toml's dependencies and its serve and train extras, the build
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
if [[ -f "$WHEELS/.e2e-requirements" && "$(cat "$WHEELS/.e2e-requirements")" == "$stamp" ]]; then
  echo "$WHEELS already holds these requirements' wheels ($(du -sh "$WHEELS" | cut -f1))"
else
  platforms=()
  for minor in $(seq 40 -1 5); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
  timeout 1200 "$PY" -m pip download -q --disable-pip-version-check -d "$WHEELS" \
    --only-binary=:all: "${platforms[@]}" --implementation cp \
    --python-version "$pyver" --abi "cp${pyver/./}" "${reqs[@]}" 2>&1 | grep -v "is ignored" || true
  "$PY" -m pip download -q --disable-pip-version-check -d "$WHEELS" --no-index --find-links "$WHEELS" \
    --only-binary=:all: "${platforms[@]}" --implementation cp --python-version "$pyver" \
    --abi "cp${pyver/./}" "${reqs[@]}" >/dev/null 2>&1 || fail "pip download left $WHEELS incomplete"
  printf '%s\n' "$stamp" >"$WHEELS/.e2e-requirements"
  echo "$WHEELS: $(find "$WHEELS" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1)"
fi
"$PY" -m http.server --bind 127.0.0.1 --directory "$WHEELS" "$WHEEL_PORT" >"$tmp/wheels.log" 2>&1 &
wheel_server=$!
for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$WHEEL_PORT/" && break; sleep 0.2; done
curl -fsS -o /dev/null "http://127.0.0.1:$WHEEL_PORT/" || fail "the wheel server did not start on port $WHEEL_PORT"

# --- 4. the images -------------------------------------------------------------------------
images_before="$("${DOCKER[@]}" image ls -a -q --no-trunc)"
build() { # build DOCKERFILE TAG: offline, pip fetching from the loopback wheel server only
  timeout 1500 "${DOCKER[@]}" build --network host --force-rm \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg PIP_NO_INDEX=1 \
    --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$WHEEL_PORT/" \
    -f "$1" -t "$2" . 2>&1 | grep -v -E "^(DEPRECATED|  *(BuildKit|Install the buildx))" | tail -n 25
}
phase "build service image"
build docker/service.Dockerfile "$SERVICE_IMAGE"
phase "build trainer image"
build docker/trainer.Dockerfile "$TRAINER_IMAGE"
"${DOCKER[@]}" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -F "$PROJECT" || fail "images missing"

# --- 5. compose: service first, then the trainer, then predictions -------------------------
SERVICE_PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export SERVICE_PORT
URL="http://127.0.0.1:$SERVICE_PORT"

phase "service up on the empty volume"
compose up -d --no-build service
cid="$(compose ps -q service)"
[[ -n "$cid" ]] || fail "no service container"
health=""
for _ in $(seq 120); do
  health="$("${DOCKER[@]}" inspect -f '{{.State.Health.Status}}' "$cid")"
  [[ "$health" == healthy ]] && break
  [[ "$("${DOCKER[@]}" inspect -f '{{.State.Running}}' "$cid")" == true ]] || fail "the service exited"
  sleep 1
done
[[ "$health" == healthy ]] || fail "the service is not healthy after 120 s (status: $health)"
echo "healthcheck: $health"
[[ "$(compose port service 8000)" == "127.0.0.1:$SERVICE_PORT" ]] ||
  fail "port published as $(compose port service 8000), not on 127.0.0.1 only"
curl -fsS --max-time 5 "$URL/healthz" >/dev/null || fail "/healthz is not OK"
code="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$URL/readyz")"
[[ "$code" == 503 ]] || fail "/readyz on an empty volume answered $code, expected 503"
echo "empty volume: /healthz 200, /readyz $code"
[[ "$("${DOCKER[@]}" exec "$cid" id -u)" == 10001 ]] || fail "the service does not run as uid 10001"
pid1="$("${DOCKER[@]}" exec "$cid" cat /proc/1/cmdline | tr '\0' ' ')"
[[ "$pid1" == *dumb-init* ]] || fail "PID 1 is '$pid1', not dumb-init"
"${DOCKER[@]}" top "$cid" -o pid,ppid,user,args | grep "python -m service" >/dev/null || fail "no service under PID 1"
if "${DOCKER[@]}" exec "$cid" sh -c 'touch /models/.probe' 2>/dev/null; then fail "/models is writable in the service"; fi
echo "service: uid 10001, PID 1 = $pid1, /models read-only"

phase "trainer (CPU, tiny subset)"
# The README's CPU path: `docker compose --profile cpu up trainer-cpu`.
timeout 1500 "${COMPOSE[@]}" up --no-build trainer-cpu 2>&1 | tee "$tmp/trainer.log" | grep -E "device:|data:|published|error|Error|==" || true
tid="$(compose ps -q trainer-cpu)"
[[ "$("${DOCKER[@]}" inspect -f '{{.State.ExitCode}}' "$tid")" == 0 ]] || fail "the trainer failed"
grep -q "device: cpu" "$tmp/trainer.log" || fail "the trainer did not log its device"

phase "predict"
code=""
for _ in $(seq 60); do
  code="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$URL/readyz")"
  [[ "$code" == 200 ]] && break
  sleep 1
done
[[ "$code" == 200 ]] || fail "the service did not become ready within 60 s of the trainer publishing"
# A real MNIST test digit, written as dark ink on white paper, 4x enlarged.
label="$("$PY" - "$E2E_MNIST_DIR" "$tmp/digit.png" <<'EOF'
import gzip, struct, sys, zlib
from pathlib import Path
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
def open_idx(name):
    raw, gz = folder / name, folder / (name + ".gz")
    return raw.read_bytes() if raw.exists() else gzip.decompress(gz.read_bytes())
images, labels = open_idx("t10k-images-idx3-ubyte"), open_idx("t10k-labels-idx1-ubyte")
i, k = 0, 4
pixels = images[16 + i * 784: 16 + (i + 1) * 784]
rows = b"".join(b"\0" + bytes(255 - pixels[(y // k) * 28 + x // k] for x in range(28 * k)) for y in range(28 * k))
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 28 * k, 28 * k, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
out.write_bytes(png)
print(labels[8 + i])
EOF
)"
check_prediction() { # check_prediction STEP: the README's curl, then the answer's shape
  curl -fsS --max-time 10 -F "file=@$tmp/digit.png;type=image/png" "$URL/predict/$1" >"$tmp/pred-$1.json" ||
    fail "POST /predict/$1 failed: $(cat "$tmp/pred-$1.json" 2>/dev/null)"
  "$PY" - "$1" "$tmp/pred-$1.json" "$label" <<'EOF'
import json, sys
step, answer, label = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
assert answer["step"] == step, answer
assert answer["digit"] in range(10), answer
p = answer["probabilities"]
assert len(p) == 10 and abs(sum(p) - 1) < 1e-3 and all(0 <= x <= 1 for x in p), p
assert 0 <= answer["confidence"] <= 1 and answer["version"], answer
print(f"POST /predict/{step}: digit {answer['digit']} (confidence {answer['confidence']:.2f}, "
      f"version {answer['version']}); the image is a {label} (tiny subset, one epoch)")
EOF
}
for step in ${E2E_STEPS//,/ }; do check_prediction "$step"; done
first="${E2E_STEPS%%,*}"
curl -fsS --max-time 10 "$URL/steps/$first/summary" >"$tmp/summary.json" || fail "GET /steps/$first/summary failed"
"$PY" -c 'import json,sys; s=json.load(open(sys.argv[1])); assert s["total_params"] > 0 and s["layers"], s; print("GET /steps/%s/summary: %d layers, %d params" % (sys.argv[2], len(s["layers"]), s["total_params"]))' "$tmp/summary.json" "$first"

phase "graceful stop"
stop_start=$SECONDS
timeout 60 "${COMPOSE[@]}" stop --timeout 30 service >/dev/null 2>&1
took=$((SECONDS - stop_start))
exit_code="$("${DOCKER[@]}" inspect -f '{{.State.ExitCode}}' "$cid")"
"${DOCKER[@]}" logs "$cid" >"$tmp/service.log" 2>&1
tail -3 "$tmp/service.log"
# uvicorn re-raises SIGTERM once it has shut down, so dumb-init reports 128 + 15.
[[ "$exit_code" == 0 || "$exit_code" == 143 ]] || fail "the service exited with $exit_code on SIGTERM"
((took < 25)) || fail "stopping the service took $took s: SIGTERM was not handled"
grep -q "Waiting for application shutdown" "$tmp/service.log" && grep -q "Finished server process" "$tmp/service.log" ||
  fail "uvicorn did not log a graceful shutdown"
echo "SIGTERM: graceful shutdown in ${took} s (exit $exit_code)"

if [[ "${E2E_REPLICAS:-1}" == 1 ]]; then
  phase "replicas behind nginx, under load"
  # shellcheck source=tests/docker/replicas.sh
  source tests/docker/replicas.sh
fi
