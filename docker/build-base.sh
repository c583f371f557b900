#!/usr/bin/env bash
# Build a local stand-in base image for offline builds: Debian bookworm (minbase) with python3.
#
#   bash docker/build-base.sh [TAG]        # default TAG: mnist-steps-base:bookworm
#
# Where no image registry is reachable, no `FROM` can be pulled. This makes a base image out of
# thin air with debootstrap (from Debian's apt mirror) and `docker import`, so that both
# Dockerfiles can be built with `--build-arg BASE_IMAGE=mnist-steps-base:bookworm`. It has the
# same Python (3.11) as the service's default base `python:3.11-slim-bookworm`.
# Skips the work when TAG already exists (FORCE=1 rebuilds). Needs root, debootstrap, docker.
set -euo pipefail

TAG="${1:-mnist-steps-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER="${DOCKER:-docker}"

if [[ "${FORCE:-0}" != 1 ]] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "build-base: $TAG exists (FORCE=1 rebuilds it)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "build-base: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }

root="$(mktemp -d /tmp/mnist-steps-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
start=$SECONDS
# python3-venv brings ensurepip (pip's wheel), which the Dockerfiles use to make their venv.
timeout 600 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$MIRROR" >"$root.log" 2>&1 || { tail -30 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# Slim it like the official slim images: no apt lists, no docs, no caches.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" --numeric-owner -c . |
  "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap bookworm minbase + python3 (docker/build-base.sh)" \
    - "$TAG" >/dev/null
echo "build-base: built $TAG in $((SECONDS - start)) s"
