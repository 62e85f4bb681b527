#!/usr/bin/env bash
# Measures what a moved server's boot costs inside the cloud node image when
# the cloud offers no nested virtualization (as on our build hosts, whose KVM
# cannot boot Linux): the test server booted by the node image's own QEMU
# under TCG inside the node VM, itself under TCG ("nested TCG"), beside the
# same test server booted directly by the host's QEMU under TCG, in one run.
# Both count from QEMU start to the server's ISTHMUS-READY line.
# The node VM is started with init=/bin/sh (a measurement shell, not the
# product's boot) so that the inner QEMU can be started by hand over the serial
# line; its root file system, kernel, QEMU and firmware are the image's.
# The same for the tiny guest (the test server's kernel + initramfs alone, to
# ISTHMUS-INITRD-OK). Not part of `make test` (a measurement); the last stdout
# line is JSON:
#   {"direct_tcg_boot_s": .., "nested_tcg_boot_s": .., "ratio": ..,
#    "direct_tiny_s": .., "nested_tiny_s": ..}
# Usage: nested-boot.sh [CLOUD_NODE_IMAGE_DIR [TEST_SERVER_DIR]]
# Env: TIMEOUT (seconds for the nested boot, default 900); BOOT=fast measures
# the test server's BOOT=fast recipe (cloud kernel, vmxnet3 NIC: see
# test-server/README.md) instead of the normal one.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TIMEOUT=${TIMEOUT:-900}
log() { printf 'nested-boot: %s\n' "$*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}

NODE=${1:-$(ISTHMUS_CACHED_ONLY=1 bash "$HERE/build.sh" 2>/dev/null | tail -n 1)} || NODE=
[[ -n $NODE && -f $NODE/cloud-node.qcow2 ]] || die "no cloud node image (build it with make images)"
BOOT=${BOOT:-normal}
SERVER=${2:-$(BOOT=$BOOT bash "$REPO/image-build/test-server/build.sh" 2>/dev/null | tail -n 1)}
# The cloud kernel of BOOT=fast has no e1000 driver.
NIC=e1000
[[ $(jq -r .kernel "$SERVER/manifest.json") == *cloud* ]] && NIC=vmxnet3
[[ -f $SERVER/disk.qcow2 ]] || die "no test server image in '$SERVER'"
for c in qemu-system-x86_64 qemu-img jq mkfifo mkfs.vfat mcopy; do command -v "$c" >/dev/null || die "missing $c"; done
# The test server checks that its NIC has its MAC (else it stops with ISTHMUS-FAILED).
MAC=$(jq -r .mac "$SERVER/manifest.json")

TMP=$(mktemp -d /tmp/isthmus-nested.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  exec 4>&- 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_line() { # file pattern seconds pid -> prints seconds since $T0
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    if grep -qa "$2" "$1" 2>/dev/null; then
      awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
      return 0
    fi
    kill -0 "$4" 2>/dev/null || die "QEMU exited while waiting for '$2': $(tail -n 5 "$1")"
    sleep 0.1
  done
  die "no '$2' within $3 s: $(tail -n 5 "$1" | tr -d '\r')"
}

# 1. Direct: the host's QEMU, TCG, the test server's disk (overlay).
qemu-img create -q -f qcow2 -b "$SERVER/disk.qcow2" -F qcow2 "$TMP/direct.qcow2"
T0=$EPOCHREALTIME
qemu-system-x86_64 -accel tcg -m 256 -smp 1 -display none -monitor none -nodefaults -vga none \
  -serial "file:$TMP/direct.log" -drive "file=$TMP/direct.qcow2,format=qcow2,if=ide" \
  -netdev user,id=n0,restrict=on -device "$NIC,netdev=n0,mac=$MAC" </dev/null >/dev/null 2>&1 &
PIDS+=($!)
DIRECT=$(wait_line "$TMP/direct.log" ISTHMUS-READY 300 "${PIDS[-1]}")
kill "${PIDS[-1]}"
wait "${PIDS[-1]}" 2>/dev/null || true
log "direct TCG: QEMU start -> ISTHMUS-READY in $DIRECT s"
# The tiny guest: the test server's kernel + initramfs alone (prints ISTHMUS-INITRD-OK).
T0=$EPOCHREALTIME
qemu-system-x86_64 -accel tcg -m 256 -smp 1 -display none -monitor none -nodefaults -vga none \
  -serial "file:$TMP/tiny.log" -kernel "$SERVER/vmlinuz" -initrd "$SERVER/initrd.img" \
  -append console=ttyS0 -no-reboot </dev/null >/dev/null 2>&1 &
PIDS+=($!)
DIRECT_TINY=$(wait_line "$TMP/tiny.log" ISTHMUS-INITRD-OK 300 "${PIDS[-1]}")
kill "${PIDS[-1]}" 2>/dev/null || true
wait "${PIDS[-1]}" 2>/dev/null || true
log "direct TCG, tiny guest: QEMU start -> ISTHMUS-INITRD-OK in $DIRECT_TINY s"
# ...handed to the node VM on a vfat disk (/dev/sdc).
mkfs.vfat -C "$TMP/tiny.img" $((($(stat -c %s "$SERVER/vmlinuz") + $(stat -c %s "$SERVER/initrd.img")) / 1024 + 4096)) >/dev/null
mcopy -i "$TMP/tiny.img" "$SERVER/vmlinuz" "$SERVER/initrd.img" ::

# 2. Nested: the node image (TCG) runs its QEMU (TCG) on the same disk, seen as /dev/sdb.
root_uuid=$(jq -r .root_uuid "$NODE/manifest.json")
qemu-img create -q -f qcow2 -b "$NODE/cloud-node.qcow2" -F qcow2 "$TMP/node.qcow2"
qemu-img create -q -f qcow2 -b "$SERVER/disk.qcow2" -F qcow2 "$TMP/inner.qcow2"
mkfifo "$TMP/in"
qemu-system-x86_64 -accel tcg -m 1024 -smp 1 -display none -monitor none -nodefaults -vga none \
  -serial stdio -kernel "$NODE/vmlinuz" -initrd "$NODE/initrd.img" \
  -append "root=UUID=$root_uuid ro console=ttyS0,115200 quiet init=/bin/sh" \
  -drive "file=$TMP/node.qcow2,format=qcow2,if=ide,index=0" \
  -drive "file=$TMP/inner.qcow2,format=qcow2,if=ide,index=1" \
  -drive "file=$TMP/tiny.img,format=raw,if=ide,index=2" \
  <"$TMP/in" >"$TMP/node.log" 2>&1 &
PIDS+=($!)
NODE_PID=${PIDS[-1]}
exec 4>"$TMP/in"
T0=$EPOCHREALTIME
sleep 2
for ((i = 0; i < 300; i++)); do
  printf 'echo SHELL-UP\n' >&4
  grep -qa '^SHELL-UP' "$TMP/node.log" && break
  kill -0 "$NODE_PID" 2>/dev/null || die "node VM exited: $(tail -n 5 "$TMP/node.log")"
  sleep 1
done
grep -qa '^SHELL-UP' "$TMP/node.log" || die "no shell in the node VM: $(tail -n 5 "$TMP/node.log")"
log "node VM shell up after $(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
cat >&4 <<'SH'
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev 2>/dev/null; mount -t tmpfs tmpfs /tmp
modprobe -qa ata_piix sd_mod vfat nls_cp437 nls_ascii 2>/dev/null; sleep 1; mkdir -p /tmp/tiny; mount -o ro /dev/sdc /tmp/tiny && ls /dev/sdb && echo DISK-OK
SH
T0=$EPOCHREALTIME
wait_line "$TMP/node.log" '^DISK-OK' 120 "$NODE_PID" >/dev/null
T0=$EPOCHREALTIME
cat >&4 <<'SH'
qemu-system-x86_64 -accel tcg -m 256 -smp 1 -display none -monitor none -nodefaults -vga none -serial file:/tmp/t.log -kernel /tmp/tiny/vmlinuz -initrd /tmp/tiny/initrd.img -append console=ttyS0 -no-reboot </dev/null >/tmp/t.out 2>&1 &
while ! grep -q ISTHMUS-INITRD-OK /tmp/t.log 2>/dev/null; do sleep 0.2; done; echo TINY""-OK
SH
NESTED_TINY=$(wait_line "$TMP/node.log" '^TINY-OK' "$TIMEOUT" "$NODE_PID")
log "nested TCG, tiny guest: inner QEMU start -> ISTHMUS-INITRD-OK in $NESTED_TINY s (direct: $DIRECT_TINY s)"
T0=$EPOCHREALTIME
cat >&4 <<SH
qemu-system-x86_64 -accel tcg -m 256 -smp 1 -display none -monitor none -nodefaults -vga none -serial file:/tmp/s.log -drive file=/dev/sdb,format=raw,if=ide,snapshot=on -netdev user,id=n0,restrict=on -device $NIC,netdev=n0,mac=$MAC </dev/null >/tmp/q.out 2>&1 &
while ! grep -q ISTHMUS-READY /tmp/s.log 2>/dev/null; do sleep 0.2; done; echo NESTED""-READY
SH
NESTED=$(wait_line "$TMP/node.log" '^NESTED-READY' "$TIMEOUT" "$NODE_PID")
log "nested TCG: inner QEMU start -> ISTHMUS-READY in $NESTED s (direct: $DIRECT s)"
RATIO=$(awk -v a="$NESTED" -v b="$DIRECT" 'BEGIN { printf "%.1f", a / b }')
printf '{"direct_tcg_boot_s": %s, "nested_tcg_boot_s": %s, "ratio": %s, "direct_tiny_s": %s, "nested_tiny_s": %s}\n' \
  "$DIRECT" "$NESTED" "$RATIO" "$DIRECT_TINY" "$NESTED_TINY"
