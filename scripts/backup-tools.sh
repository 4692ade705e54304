#!/usr/bin/env bash
# Make sure the backup tools endor drives are installed: restic (the repository format:
# content-addressed, deduplicated, encrypted, checked) and rclone (`rclone serve restic
# --append-only`, the repository server that refuses deletes and overwrites), and OpenSSH (the
# off-site repository the tests reach over SSH on loopback, behind a forced command; its
# server is started by the test itself on a port of its own). Idempotent; on a fresh Debian
# machine (as root) it installs them.
set -euo pipefail

log() { printf '[backup-tools] %s\n' "$*" >&2; }

missing=()
command -v restic >/dev/null 2>&1 || missing+=(restic)
command -v rclone >/dev/null 2>&1 || missing+=(rclone)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
if [ ${#missing[@]} -eq 0 ]; then
  log "restic $(restic version | awk '{print $2}'), rclone $(rclone version | awk 'NR==1{print $2}') and sshd are here"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then log "need root to install ${missing[*]}"; exit 1; fi
log "installing ${missing[*]}"
DEBIAN_FRONTEND=noninteractive apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
log "installed ${missing[*]}"
