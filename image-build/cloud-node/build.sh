#!/usr/bin/env bash
# shellcheck disable=SC2034 # NAME, ROLE, PACKAGES, ... are read by common/lib.sh
# Builds the Isthmus cloud node image (CSC + CSL): the appliance image's base
# (read-only ext4 root from Debian packages, busybox init, buildroot-overlay/)
# with the stripped `isthmus-node` binary, QEMU 10 (bookworm-backports), SeaBIOS,
# OVMF and iPXE ROMs, plus an ext4 data partition for keys, disks and guests.
# The enrolment token comes from a seed disk (file `token` on a vfat/iso9660
# medium), never from the kernel command line.
# Cached in /var/cache/isthmus/cloud-node-<hash>/ (cloud-node.qcow2,
# vmlinuz, initrd.img, manifest.json); the hash covers this directory,
# image-build/common/, buildroot-overlay/ and the binary's sha256.
# The last line on stdout is the cache directory; a warm run returns at once.
# Usage: build.sh [path/to/isthmus-node]   (default: target/release/isthmus-node)
# Env: MIRROR, SECURITY_MIRROR (Debian mirrors), ISTHMUS_CACHE, SOURCE_DATE_EPOCH.
set -euo pipefail
exec 3>&1 1>&2 # stdout is only for the result line

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
NAME=cloud-node
ROLE=node
# shellcheck source=SCRIPTDIR/../common/lib.sh
. "$HERE/../common/lib.sh"

[[ $(id -u) == 0 ]] || die "must run as root (device nodes in the image tree): sudo make images"
for c in mmdebstrap sfdisk mkfs.ext4 grub-mkimage qemu-img cpio strip jq python3; do
  command -v "$c" >/dev/null || die "missing $c: run tests/setup/deps.sh"
done

NODE_BIN=${1:-$REPO/target/release/isthmus-node}
# hv's batched-XTS preload for QEMU's LUKS (hv/preload, built by hv's build.rs
# next to the binaries): installed beside isthmus-node, where hv looks first.
BINARIES=("$NODE_BIN" "$(dirname "$NODE_BIN")/libisthmus-xts.so")
# No binary given: the release binary of this checkout, and the image is keyed
# by the checkout's sources (common/lib.sh source_key), not the binary's digest.
SOURCE_KEYED=${1:+}
[[ -n ${1:-} ]] || SOURCE_KEYED=1
PACKAGES=(libc6 libgcc-s1 e2fsprogs qemu-system-x86 qemu-utils seabios ipxe-qemu ovmf)
# QEMU 10 as on the build hosts (hv relies on it); everything else from bookworm.
APT_PREFS='Package: qemu-system-x86 qemu-system-common qemu-system-data qemu-system-gui qemu-utils qemu-block-extra seabios ipxe-qemu
Pin: release n=bookworm-backports
Pin-Priority: 990'
# Guests: TAPs, KVM when the cloud offers nested virtualization, vhost-net.
ROOT_MODULES=("${BASE_MODULES[@]}" tun kvm kvm-intel kvm-amd vhost_net bridge)
ROOT_MB=640
DISK_MB=4096

build_product_image "$HERE" "$COMMON" "$OVERLAY"
