#!/usr/bin/env bash
# Build a local stand-in for the official nginx image, for offline runs: Debian bookworm
# (minbase) with Debian's nginx, made with debootstrap and `docker import` as docker/build-base.sh
# makes the Python base.
#
#   bash docker/build-nginx.sh [TAG]       # default TAG: mnist-steps-nginx:bookworm
#
# docker-compose.replicas.yml runs the pinned `nginx:1.28.0-alpine`; where no registry is
# reachable, NGINX_IMAGE=TAG runs this instead. Both start nginx the same way (`nginx -g 'daemon
# off;'`) with docker/nginx.conf mounted over their own; the Compose file stops either with
# SIGQUIT, nginx's graceful stop (`docker import` cannot set a STOPSIGNAL).
# Skips the work when TAG already exists (FORCE=1 rebuilds). Needs root, debootstrap, docker.
set -euo pipefail

TAG="${1:-mnist-steps-nginx:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER="${DOCKER:-docker}"

if [[ "${FORCE:-0}" != 1 ]] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "build-nginx: $TAG exists (FORCE=1 rebuilds it)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "build-nginx: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }

root="$(mktemp -d /tmp/mnist-steps-nginx.XXXXXX)"
trap 'rm -rf "$root" "$root.log"' EXIT
start=$SECONDS
timeout 600 debootstrap --variant=minbase --include=nginx bookworm "$root" "$MIRROR" >"$root.log" 2>&1 ||
  { tail -30 "$root.log" >&2; exit 1; }
# Debian's own site and logs are not used: docker/nginx.conf replaces nginx.conf whole.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" --numeric-owner -c . |
  "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'EXPOSE 80' \
    --change 'CMD ["nginx", "-g", "daemon off;"]' \
    --message "debootstrap bookworm minbase + nginx (docker/build-nginx.sh)" \
    - "$TAG" >/dev/null
echo "build-nginx: built $TAG ($("$DOCKER" run --rm --network none "$TAG" nginx -v 2>&1)) in $((SECONDS - start)) s"
