#!/usr/bin/env bash
# make bench-images: figures of the product images, with a stock Debian boot
# measured the same way in the same run (the host is shared and noisy: compare
# the two columns, not figures from another day).
#   sizes          appliance.qcow2, cloud-node.qcow2, the OVA
#   build times    cold (the appliance recipe into an empty cache, packages
#                  downloaded again) and warm (cache hit)
#   reproducible   the cold build's raw-disk and qcow2 digests against the
#                  cached build of the same recipe
#   boot           QEMU start -> "console: https://..." on the serial line
#                  (appliance from its disk via SeaBIOS+GRUB, and by direct
#                  kernel boot), and QEMU start -> "login:" of a stock Debian 12
#                  (minbase + systemd + linux-image-amd64 with its
#                  initramfs-tools initramfs, direct kernel boot), all TCG,
#                  1 vCPU, 1 GiB, user-mode NIC (DHCP). Debian's ifupdown
#                  networking.service is masked: under TCG here its DHCP wait
#                  blocks boot for 5 min, so Debian is timed to login without
#                  network (in its favour; the appliance does DHCP first).
# The last line is one JSON object.
# Env: BENCH_COLD=0 skips the cold build; BOOT_RUNS (2) boots each way.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${ISTHMUS_CACHE:-/var/cache/isthmus}
BENCH_COLD=${BENCH_COLD:-1}
BOOT_RUNS=${BOOT_RUNS:-2}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

log() { printf 'bench-images: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
[[ $(id -u) == 0 ]] || die "must run as root (image builds use loop devices): sudo make bench-images"

TMP=$(mktemp -d /tmp/isthmus-bench-images.XXXXXX)
QEMU_PID=
cleanup() {
  local rc=$?
  set +e
  if [[ -n $QEMU_PID ]]; then
    kill "$QEMU_PID" 2>/dev/null
    wait "$QEMU_PID" 2>/dev/null
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f", b / 1048576 }'; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# Warm builds (also make sure everything exists).
t0=$EPOCHREALTIME
APP=$(bash "$HERE/build.sh" | tail -n 1)
BUILD_WARM=$(elapsed "$t0")
NODE=$(bash "$HERE/../cloud-node/build.sh" | tail -n 1)
OVA=$(bash "$HERE/../ova/build.sh" "$APP" | tail -n 1)
log "warm build of the appliance: $BUILD_WARM s"

BUILD_COLD=null
REPRO=null
if [[ $BENCH_COLD == 1 ]]; then
  mkdir -p "$TMP/cache"
  t0=$EPOCHREALTIME
  # Same update signing key (it is part of the recipe), fresh package cache.
  COLD=$(ISTHMUS_CACHE=$TMP/cache ISTHMUS_UPDATE_KEY=${ISTHMUS_UPDATE_KEY:-$CACHE_ROOT/keys/update-ed25519.pem} \
    bash "$HERE/build.sh" | tail -n 1)
  BUILD_COLD=$(elapsed "$t0")
  log "cold build of the appliance: $BUILD_COLD s"
  # Ed25519 signatures are deterministic: the signed update image must match too.
  a="$(jq -r '.raw_sha256 + " " + .qcow2_sha256' "$APP/manifest.json") $(sha256sum <"$APP/appliance-update.img" | cut -c1-64)"
  b="$(jq -r '.raw_sha256 + " " + .qcow2_sha256' "$COLD/manifest.json") $(sha256sum <"$COLD/appliance-update.img" | cut -c1-64)"
  if [[ $a == "$b" ]]; then REPRO=true; else REPRO=false; fi
  log "reproducible (raw, qcow2 and update image digests of two builds equal): $REPRO"
  [[ $REPRO == true ]] || log "  cached: $a / second build: $b"
  rm -rf "$TMP/cache"
fi

# Stock Debian 12 for the boot comparison, built once and cached.
debian_image() {
  local dir=$CACHE_ROOT/bench-debian-bookworm-1 work
  if [[ ! -f $dir/disk.raw ]]; then
    log "building the stock Debian comparison image once (mmdebstrap minbase + systemd + kernel)"
    work=$(mktemp -d "$CACHE_ROOT/.build-bench-debian.XXXXXX")
    chmod 755 "$work"
    # shellcheck disable=SC2016 # $1 is mmdebstrap's hook argument (the root)
    mmdebstrap --quiet --variant=minbase --include=systemd-sysv,linux-image-amd64,udev,ifupdown,isc-dhcp-client \
      --customize-hook='echo debian > "$1/etc/hostname"' \
      --customize-hook='printf "auto eth0\niface eth0 inet dhcp\n" > "$1/etc/network/interfaces"' \
      --customize-hook='chroot "$1" passwd -d root' \
      bookworm "$work/root" "deb $MIRROR bookworm main" >&2
    cp "$work"/root/boot/vmlinuz-* "$work/vmlinuz"
    cp "$work"/root/boot/initrd.img-* "$work/initrd.img"
    truncate -s 2G "$work/disk.raw"
    mkfs.ext4 -q -F -L debroot -d "$work/root" "$work/disk.raw"
    rm -rf "$work/root"
    mv -T "$work" "$dir"
  fi
  echo "$dir"
}
DEB=$(debian_image)

boot_until() { # boot_until <pattern> <qemu args...>: prints seconds to the first line matching
  local pat=$1 serial=$TMP/serial.log t0 i
  shift
  rm -f "$serial"
  t0=$EPOCHREALTIME
  qemu-system-x86_64 -accel tcg -m 1024 -smp 1 -display none -monitor none -nodefaults -vga none \
    -serial "file:$serial" -netdev user,id=n0 -device e1000,netdev=n0 -snapshot "$@" \
    </dev/null >"$TMP/qemu.out" 2>&1 &
  QEMU_PID=$!
  for ((i = 0; i < 3000; i++)); do
    if grep -qaE "$pat" "$serial" 2>/dev/null; then
      elapsed "$t0"
      kill "$QEMU_PID"
      wait "$QEMU_PID" 2>/dev/null || true
      QEMU_PID=
      return 0
    fi
    kill -0 "$QEMU_PID" 2>/dev/null || die "QEMU exited: $(cat "$TMP/qemu.out")"
    sleep 0.1
  done
  die "no '$pat' within 300 s: $(tail -n 5 "$serial")"
}

median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

APP_CMDLINE=$(jq -r .kernel_cmdline "$APP/manifest.json")
app_disk=() app_direct=() deb=()
for ((r = 1; r <= BOOT_RUNS; r++)); do
  app_disk+=("$(boot_until '^console: https://' -drive "file=$APP/appliance.qcow2,format=qcow2,if=ide")")
  app_direct+=("$(boot_until '^console: https://' -drive "file=$APP/appliance.qcow2,format=qcow2,if=ide" \
    -kernel "$APP/vmlinuz" -initrd "$APP/initrd.img" -append "$APP_CMDLINE")")
  deb+=("$(boot_until 'login: ?$|login:' -drive "file=$DEB/disk.raw,format=raw,if=ide" \
    -kernel "$DEB/vmlinuz" -initrd "$DEB/initrd.img" -append "root=LABEL=debroot ro console=ttyS0,115200 net.ifnames=0 systemd.mask=networking.service")")
  log "run $r: appliance disk->URL ${app_disk[-1]} s, appliance kernel->URL ${app_direct[-1]} s, Debian kernel->login ${deb[-1]} s"
done
BOOT_URL=$(median "${app_disk[@]}")
BOOT_URL_DIRECT=$(median "${app_direct[@]}")
DEB_BOOT=$(median "${deb[@]}")

APP_MIB=$(mib "$APP/appliance.qcow2")
NODE_MIB=$(mib "$NODE/cloud-node.qcow2")
OVA_MIB=$(mib "$OVA/isthmus-appliance.ova")
printf '\n%-44s %10s\n' "figure" "value" >&2
printf '%-44s %10s\n' "appliance.qcow2 MiB (target <= 200)" "$APP_MIB" "cloud-node.qcow2 MiB" "$NODE_MIB" \
  "isthmus-appliance.ova MiB" "$OVA_MIB" "appliance build cold s" "$BUILD_COLD" "appliance build warm s" "$BUILD_WARM" \
  "reproducible (two builds, same digests)" "$REPRO" \
  "appliance disk boot -> console URL s" "$BOOT_URL" "appliance kernel boot -> console URL s" "$BOOT_URL_DIRECT" \
  "stock Debian kernel boot -> login s" "$DEB_BOOT" >&2
printf '{"appliance_qcow2_mib": %s, "cloud_node_qcow2_mib": %s, "ova_mib": %s, "boot_to_url_s": %s, "boot_to_url_direct_kernel_s": %s, "debian_boot_s": %s, "build_cold_s": %s, "build_warm_s": %s, "reproducible": %s, "boot_runs": %s, "accel": "tcg"}\n' \
  "$APP_MIB" "$NODE_MIB" "$OVA_MIB" "$BOOT_URL" "$BOOT_URL_DIRECT" "$DEB_BOOT" "$BUILD_COLD" "$BUILD_WARM" "$REPRO" "$BOOT_RUNS"
