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
# A network per site: Docker's default address pools hold about 30 networks, so give it
# small subnets (4,096 networks of 14 addresses), as a host running many previews needs.
conf=/etc/docker/daemon.json
want='{"default-address-pools": [{"base": "10.213.0.0/16", "size": 28}]}'
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
  mkdir -p /etc/docker
  printf '%s\n' "$want" > "$conf"
  if docker_ok; then
    log "restarting dockerd for its address pools"
    pkill -x dockerd || true
    for _ in $(seq 1 150); do pgrep -x dockerd >/dev/null || break; sleep 0.2; done
  fi
fi
if ! docker_ok; then
  log "starting dockerd"
  # A pid file left by a dockerd that is gone (or a zombie) would stop the new one.
  if [ -f /var/run/docker.pid ]; then
    pid=$(cat /var/run/docker.pid)
    state=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    if [ -z "$state" ] || [ "$state" = Z ] || [ "$comm" != dockerd ]; then rm -f /var/run/docker.pid; fi
  fi
  # Twice at most: a containerd left by a killed dockerd can make the first start time out.
  for attempt in 1 2; do
    nohup dockerd --host unix:///var/run/docker.sock >/var/log/endor-dockerd.log 2>&1 &
    for _ in $(seq 1 150); do docker_ok && break; sleep 0.2; done
    docker_ok && break
    log "dockerd did not answer (attempt $attempt)"
    pkill -x dockerd || true
    sleep 2
    rm -f /var/run/docker.pid
  done
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
