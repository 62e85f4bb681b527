#!/usr/bin/env bash
# shellcheck disable=SC2034 # NAME, ROLE, PACKAGES, ... are read by common/lib.sh
# Builds the Isthmus appliance image (LMA + LCG): a read-only ext4 root made
# from Debian packages (busybox init, glibc, e2fsprogs) with buildroot-overlay/
# and the stripped `isthmus` binary, plus an ext4 data partition for the store,
# keys and logs. Cached in /var/cache/isthmus/appliance-<hash>/ (appliance.qcow2,
# vmlinuz, initrd.img, manifest.json); the hash covers this directory,
# image-build/common/, buildroot-overlay/ and the binary's sha256.
# The last line on stdout is the cache directory; a warm run returns at once.
# Usage: build.sh [path/to/isthmus]   (default: target/release/isthmus)
# Env: MIRROR, SECURITY_MIRROR (Debian mirrors), ISTHMUS_CACHE, SOURCE_DATE_EPOCH.
set -euo pipefail
exec 3>&1 1>&2 # stdout is only for the result line

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
NAME=appliance
ROLE=appliance
# shellcheck source=SCRIPTDIR/../common/lib.sh
. "$HERE/../common/lib.sh"

[[ $(id -u) == 0 ]] || die "must run as root (device nodes in the image tree): sudo make images"
for c in mmdebstrap sfdisk mkfs.ext4 grub-mkimage qemu-img cpio strip jq python3; do
  command -v "$c" >/dev/null || die "missing $c: run tests/setup/deps.sh"
done

BINARIES=("${1:-$REPO/target/release/isthmus}")
# No binary given: the release binary of this checkout, and the image is keyed
# by the checkout's sources (common/lib.sh source_key), not the binary's digest.
SOURCE_KEYED=${1:+}
[[ -n ${1:-} ]] || SOURCE_KEYED=1
# qemu-utils: qemu-img (format and allocated extents of a source disk image the
# appliance moves, e.g. one placed on /data) and qemu-storage-daemon (reads
# qcow2/VMDK sources through QEMU's block layer); the appliance runs no guests.
PACKAGES=(libc6 libgcc-s1 e2fsprogs qemu-utils)
ROOT_MODULES=("${BASE_MODULES[@]}" bridge veth) # bridge + veth: the optional LAN address (rcS, isthmus.lan_ip)
ROOT_MB=160
DISK_MB=1024

build_product_image "$HERE" "$COMMON" "$OVERLAY"
