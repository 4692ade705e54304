#!/usr/bin/env bash
# A filesystem with reflink for the clone-engine tests and benchmarks: an XFS image
# (`mkfs.xfs -m reflink=1`) loop-mounted at $ENDOR_REFLINK_MOUNT (default /mnt/endor-xfs).
# Idempotent: reuses the image and the mount when they exist. Needs root (mount) and xfsprogs,
# which it installs when missing. Prints the mount point.
set -euo pipefail
mnt="${ENDOR_REFLINK_MOUNT:-/mnt/endor-xfs}"
img="${ENDOR_REFLINK_IMAGE:-/var/tmp/endor/xfs.img}"
size="${ENDOR_REFLINK_SIZE:-24G}"   # sparse: uses only what is written

log() { printf '[reflink-fs] %s\n' "$*" >&2; }

grow() {
  # An image made smaller by an earlier version is grown in place (XFS grows online).
  local want have
  want=$(numfmt --from=iec "$size")
  have=$(stat -c %s "$img")
  if [ "$have" -lt "$want" ]; then
    log "growing $img to $size"
    truncate -s "$size" "$img"
    losetup -c "$(findmnt -n -o SOURCE "$mnt")" 2>/dev/null || true
    xfs_growfs "$mnt" >/dev/null
  fi
}

if mountpoint -q "$mnt"; then
  [ -f "$img" ] && grow
  echo "$mnt"; exit 0
fi
if [ "$(id -u)" != 0 ]; then log "need root to loop-mount $img"; exit 1; fi
if ! command -v mkfs.xfs >/dev/null 2>&1; then
  log "installing xfsprogs"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xfsprogs >/dev/null
fi
mkdir -p "$(dirname "$img")" "$mnt"
if [ ! -f "$img" ] || ! blkid -p "$img" 2>/dev/null | grep -q 'TYPE="xfs"'; then
  log "creating $size XFS image with reflink at $img"
  rm -f "$img"
  truncate -s "$size" "$img"
  mkfs.xfs -q -f -m reflink=1 "$img"
fi
mount -o loop "$img" "$mnt"
grow
log "mounted $img at $mnt"
echo "$mnt"
