#!/usr/bin/env bash
# What `make bench-inventory` needs beyond tests/setup/deps.sh: libguestfs's
# virt-inspector (the peer the inspector is timed against) and a Linux
# kernel under /boot for libguestfs's supermin appliance (containers often
# have none), and GNU time for peak RSS. Idempotent: installs only what is missing.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
pkgs=()
command -v virt-inspector >/dev/null 2>&1 || pkgs+=(libguestfs-tools)
ls /boot/vmlinuz-* >/dev/null 2>&1 || pkgs+=(linux-image-amd64)
[ -x /usr/bin/time ] || pkgs+=(time)
command -v mkfs.ext4 >/dev/null 2>&1 || pkgs+=(e2fsprogs)
command -v sfdisk >/dev/null 2>&1 || pkgs+=(fdisk)
command -v qemu-img >/dev/null 2>&1 || pkgs+=(qemu-utils)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "bench-inventory: installing ${pkgs[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
    --no-install-recommends "${pkgs[@]}" >&2
fi
