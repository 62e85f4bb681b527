#!/usr/bin/env bash
# Installs what Isthmus needs on a fresh Debian 12 (bookworm) machine.
# Idempotent: checks each tool first and installs only what is missing.
# QEMU 10 comes from bookworm-backports (BASELINES.md: bookworm's QEMU 7.2
# conflicts with the newer qemu-utils and lacks what hv uses).
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: the Rust toolchain (cargo) is missing." >&2
  echo "  Install it with rustup: https://rustup.rs  (curl --proto '=https' -sSf https://sh.rustup.rs | sh)" >&2
  echo "  then open a new shell and run this command again." >&2
  exit 1
fi

if [ "$(id -u)" != 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

need_pkgs=()
need() { # need <command-or-path> <package>
  if [[ "$1" == /* ]]; then [ -e "$1" ] || need_pkgs+=("$2");
  else command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2"); fi
}
need mmdebstrap mmdebstrap
need ip iproute2
need bridge iproute2
need tcpdump tcpdump
need partx util-linux
need mkfs.ext4 e2fsprogs
need curl curl
need /usr/lib/grub/i386-pc/boot.img grub-pc-bin
need grub-install grub2-common
need cpio cpio
need zstd zstd
need jq jq
need dot graphviz          # isthmus topology --format svg
need ping iputils-ping
need arping arping
# Headless Chromium drives the web console in the end-to-end tests.
need chromium chromium
need chromedriver chromium-driver
need sfdisk fdisk          # image-build/test-server: partition table
need socat socat           # image-build/test-server/smoke.sh: QMP
# image-build/{appliance,cloud-node,ova}: product images and their smoke test
need debugfs e2fsprogs
need strip binutils
need mkfs.vfat dosfstools  # seed disk (OVF environment, enrolment token)
need mcopy mtools
need xmllint libxml2-utils # OVF descriptor check
need openssl openssl       # smoke test: console certificate
need flock util-linux
# hv: UEFI guests (firmware = "efi") boot OVMF; gcc builds the guest's I/O benchmark.
need /usr/share/OVMF/OVMF_CODE.fd ovmf
need gcc gcc
# hv: tests/xts_preload.rs checks the batched-XTS preload against nettle's headers/library.
need /usr/include/nettle/xts.h nettle-dev
# appliance inspect tests: a Windows system disk (hive filled by hivex, NTFS written by ntfs-3g)
need hivexregedit libwin-hivex-perl
need mkntfs ntfs-3g
need ntfs-3g ntfs-3g
need python3 python3
# hv: the guest-alive test talks to a real qemu-ga (run on the host, unix socket).
need /usr/sbin/qemu-ga qemu-guest-agent

backports=()
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  backports+=(qemu-system-x86 qemu-utils)
fi

if [ ${#need_pkgs[@]} -gt 0 ] || [ ${#backports[@]} -gt 0 ]; then
  if [ ${#backports[@]} -gt 0 ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deps: adding bookworm-backports to apt sources (for QEMU 10)"
    echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/isthmus-backports.list >/dev/null
  fi
  echo "deps: apt-get install ${need_pkgs[*]} ${backports[*]}"
  $SUDO apt-get update -qq
  export DEBIAN_FRONTEND=noninteractive
  if [ ${#need_pkgs[@]} -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
  fi
  if [ ${#backports[@]} -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports "${backports[@]}" ipxe-qemu seabios
  fi
fi
echo "deps: all present ($(qemu-system-x86_64 --version | head -1))"
