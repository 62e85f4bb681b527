#!/usr/bin/env bash
# `make bench-hv`'s guest: the test-server image with fio (and the shared
# libraries it needs, from this Debian 12 host) added, so I/O is measured by
# fio inside the guest. Cached in /var/cache/isthmus/hv-bench-fio-<hash>/
# keyed by this script, the test-server image it starts from and the fio
# package version. The last line on stdout is that directory. Root only
# (loop mount). Installs fio/libaio1 on the host if missing (bench deps).
set -euo pipefail
exec 3>&1 1>&2

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE_ROOT=${ISTHMUS_CACHE:-/var/cache/isthmus}
log() { printf 'hv-bench-fio: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (loop mount of the image)"
if ! command -v fio >/dev/null 2>&1; then
  log "installing fio (bench dependency)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fio libaio1 >&2
fi

SERVER=$(bash "$ROOT/image-build/test-server/build.sh" | tail -1)
[ -f "$SERVER/disk.qcow2" ] || die "no test-server image ($SERVER)"
FIO_VERSION=$(dpkg-query -W -f='${Version}' fio)
HASH=$( (sha256sum "$0"; basename "$SERVER"; echo "$FIO_VERSION") | sha256sum | cut -c1-16)
FINAL=$CACHE_ROOT/hv-bench-fio-$HASH
if [ -f "$FINAL/disk.qcow2" ]; then
  echo "$FINAL" >&3
  exit 0
fi

WORK=$(mktemp -d "$CACHE_ROOT/.build-hv-bench-fio.XXXXXX")
MNT=$WORK/mnt
cleanup() {
  set +e
  mountpoint -q "$MNT" && umount "$MNT"
  rm -rf "$WORK"
}
trap cleanup EXIT

log "adding fio $FIO_VERSION to $(basename "$SERVER")"
qemu-img convert -O raw "$SERVER/disk.qcow2" "$WORK/disk.raw"
mkdir -p "$MNT"
# The root partition starts at 1 MiB (image-build/test-server/build.sh).
mount -o loop,offset=1048576 "$WORK/disk.raw" "$MNT"
install -D -m 755 "$(command -v fio)" "$MNT/usr/bin/fio"
# Shared libraries by the paths the dynamic loader was given, plus the loader.
ldd "$(command -v fio)" | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' | sort -u |
  while read -r lib; do
    install -D -m 644 "$(readlink -f "$lib")" "$MNT$lib"
  done
chmod 755 "$MNT"/lib64/ld-linux-x86-64.so.2
chroot "$MNT" /usr/bin/fio --version >&2 || die "fio does not run inside the image"
umount "$MNT"
mkdir -p "$WORK/out"
qemu-img convert -O qcow2 "$WORK/disk.raw" "$WORK/out/disk.qcow2"
cp "$SERVER/vmlinuz" "$SERVER/initrd.img" "$WORK/out/"
mv -T "$WORK/out" "$FINAL"
log "built $FINAL"
echo "$FINAL" >&3
