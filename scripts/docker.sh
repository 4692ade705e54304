#!/usr/bin/env bash
# The Docker Engine for the `runtime.kind = "docker"` tests and benchmark: Debian's docker.io,
# dockerd started when it is not running, and a small base image built here (no registry is
# reachable): debootstrap --variant=minbase (with python3) imported as
# endor-base:bookworm-py. Idempotent; needs root.
set -euo pipefail
log() { printf '[docker] %s\n' "$*" >&2; }
image=endor-base:bookworm-py
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  log "installing docker.io and debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi
docker_ok() { /usr/bin/docker version >/dev/null 2>&1; }
if ! docker_ok; then
  log "starting dockerd"
  nohup dockerd --host unix:///var/run/docker.sock >/var/log/endor-dockerd.log 2>&1 &
  for _ in $(seq 1 100); do docker_ok && break; sleep 0.2; done
  docker_ok || { log "dockerd did not start (see /var/log/endor-dockerd.log)"; exit 1; }
fi
if ! /usr/bin/docker image inspect "$image" >/dev/null 2>&1; then
  root=$(mktemp -d /var/tmp/endor-rootfs.XXXXXX)
  log "building $image with debootstrap (about a minute)"
  debootstrap --variant=minbase --include=python3 bookworm "$root" http://deb.debian.org/debian >/dev/null
  tar -C "$root" -c . | /usr/bin/docker import - "$image" >/dev/null
  rm -rf "$root"
fi
log "dockerd is up; $image is here"
