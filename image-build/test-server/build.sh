#!/usr/bin/env bash
# Builds the Isthmus "test source server" disk image (see README.md) and caches
# it in /var/cache/isthmus/test-server-<hash>/. The last line on stdout is that
# directory; everything else goes to stderr. A warm run returns at once.
#
# Env overrides (part of the recipe hash): HOSTNAME_ (web1), MAC
# (52:54:00:12:34:56), IP (10.77.0.10/24), GW (none), DISK_MB (256), BOOT
# (normal | fast: a kernel command line and initramfs for nested TCG, see README.md).
# Not hashed: MIRROR, SECURITY_MIRROR (Debian mirrors), ISTHMUS_CACHE.
set -euo pipefail

exec 3>&1 1>&2 # stdout is only for the result line

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOSTNAME_=${HOSTNAME_:-web1}
MAC=${MAC:-52:54:00:12:34:56}
MAC=${MAC,,}
IP=${IP:-10.77.0.10/24}
GW=${GW:-}
DISK_MB=${DISK_MB:-256}
BOOT=${BOOT:-normal}
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CACHE_ROOT=${ISTHMUS_CACHE:-/var/cache/isthmus}

# Storage drivers the initramfs loads, in this order (dependencies come from modules.dep).
INITRD_MODULES=(crc32c_generic crct10dif_generic crc64_rocksoft_generic sd_mod ext4
  virtio_pci virtio_blk virtio_scsi ata_piix ahci sym53c8xx
  mptsas megaraid_sas vmw_pvscsi nvme sr_mod)
# Everything the root filesystem keeps under /lib/modules.
ROOT_MODULES=("${INITRD_MODULES[@]}" e1000 e1000e 8139too 8139cp vmxnet3 pcnet32 virtio_net
  button evdev pvpanic-pci)
KERNEL_CMDLINE_EXTRA="console=ttyS0,115200 quiet panic=5"
KERNEL_PKG=linux-image-amd64
# BOOT=fast: for a guest that boots under nested TCG (a moved server in the
# cloud node image on a cloud without nested virtualization), where each
# instruction costs ~25-40x more than under plain TCG. Debian's cloud kernel
# (LZ4-compressed: its decompressor runs in seconds where the generic kernel's
# XZ takes a minute or two nested; far fewer built-in drivers), the crypto
# self-tests and the costliest initcalls skipped, the TSC trusted (no
# clocksource watchdog, no timer check), no KASLR, no EDD probe; an initramfs
# with the IDE driver only. That kernel has no e1000/e1000e/AHCI/LSI drivers:
# IDE or virtio disks, vmxnet3 or virtio-net NICs (README.md). Same services
# and facts.
FAST_CMDLINE="cryptomgr.notests tsc=reliable no_timer_check mitigations=off nokaslr edd=off initcall_blacklist=crypto_kdf108_init,btf_vmlinux_init,init_blk_tracer"
case "$BOOT" in
  normal) ;;
  fast)
    KERNEL_PKG=linux-image-cloud-amd64
    INITRD_MODULES=(sd_mod ata_piix)
    ROOT_MODULES=(sd_mod ata_piix virtio_pci virtio_blk virtio_scsi vmxnet3 virtio_net button evdev pvpanic-pci)
    KERNEL_CMDLINE_EXTRA="$KERNEL_CMDLINE_EXTRA $FAST_CMDLINE"
    ;;
  *) echo "test-server: error: bad BOOT=$BOOT (normal or fast)" >&2; exit 1 ;;
esac

log() { printf 'test-server: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $HOSTNAME_ =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]] || die "bad HOSTNAME_=$HOSTNAME_"
[[ $MAC =~ ^([0-9a-f]{2}:){5}[0-9a-f]{2}$ ]] || die "bad MAC=$MAC"
[[ $IP =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$ ]] || die "bad IP=$IP (want a.b.c.d/nn)"
[[ -z $GW || $GW =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || die "bad GW=$GW"
if ! [[ $DISK_MB =~ ^[0-9]+$ ]] || ((DISK_MB < 64)); then die "bad DISK_MB=$DISK_MB (>= 64)"; fi

# Recipe hash: every file here (content and mode) except docs (*.md), the smoke
# test and dot-files, plus the overrides. README.md documents this rule.
recipe_hash() {
  (
    cd "$HERE"
    find . -type f ! -name '*.md' ! -name smoke.sh ! -name '.*' -printf '%m %p\n' | LC_ALL=C sort
    find . -type f ! -name '*.md' ! -name smoke.sh ! -name '.*' -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum
    printf 'HOSTNAME_=%s\nMAC=%s\nIP=%s\nGW=%s\nDISK_MB=%s\nSUITE=%s\n' \
      "$HOSTNAME_" "$MAC" "$IP" "$GW" "$DISK_MB" "$SUITE"
    [[ $BOOT == normal ]] || printf 'BOOT=%s\n' "$BOOT"
  ) | sha256sum | cut -c1-16
}

HASH=$(recipe_hash)
FINAL="$CACHE_ROOT/test-server-$HASH"

if [[ -f $FINAL/manifest.json ]]; then
  echo "$FINAL" >&3
  exit 0
fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.test-server-$HASH.lock"
flock 9
if [[ -f $FINAL/manifest.json ]]; then # built by a concurrent run meanwhile
  echo "$FINAL" >&3
  exit 0
fi
# Leftovers of killed builds of this recipe (we hold its lock).
rm -rf "$CACHE_ROOT/.build-test-server-$HASH."*

START=$SECONDS
WORK=$(mktemp -d "$CACHE_ROOT/.build-test-server-$HASH.XXXXXX")
chmod 755 "$WORK" # apt's download sandbox user must reach it
LOOP=
MNT=
cleanup() {
  local rc=$?
  set +e
  if [[ -n $MNT ]] && mountpoint -q "$MNT"; then umount "$MNT"; fi
  if [[ -n $LOOP ]]; then
    partx -d "$LOOP" 2>/dev/null
    losetup -d "$LOOP"
  fi
  rm -rf "$WORK"
  ((rc == 0)) || log "build failed (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building $FINAL (hostname=$HOSTNAME_ mac=$MAC ip=$IP)"

# 1. Packages: extract (no maintainer scripts) the kernel and static busybox.
STAGE=$WORK/stage
log "mmdebstrap: $KERNEL_PKG busybox-static ($SUITE)"
mmdebstrap --variant=extract --include="$KERNEL_PKG,busybox-static" \
  --aptopt='Acquire::Retries "3"' \
  "$SUITE" "$STAGE" "deb $MIRROR $SUITE main" "deb $SECURITY_MIRROR $SUITE-security main"
BB=$STAGE/bin/busybox
[[ -x $BB ]] || die "no busybox in the stage"
mapfile -t kvers < <(ls "$STAGE/lib/modules")
((${#kvers[@]} == 1)) || die "expected one kernel, got: ${kvers[*]}"
KVER=${kvers[0]}
[[ $KVER != *cloud* || $BOOT == fast ]] || die "got a -cloud kernel ($KVER)"
log "kernel $KVER"
"$BB" depmod -b "$STAGE" "$KVER"
MODDIR=$STAGE/lib/modules/$KVER

# Module files (relative to $MODDIR) of the given module names with all dependencies.
module_closure() {
  local n line d
  for n in "$@"; do
    if grep -qE "(^|/)${n}\.ko$" "$MODDIR/modules.builtin"; then continue; fi
    line=$(grep -E "(^|/)${n}\.ko(\.xz|\.zst|\.gz)?:" "$MODDIR/modules.dep") ||
      die "module $n not in $KVER"
    echo "${line%%:*}"
    for d in ${line#*:}; do echo "$d"; done
  done | sort -u
}

# Copies busybox, its applet links and the given modules into a tree.
populate_tree() { # dir module-names...
  local dir=$1 applet
  shift
  mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,root,etc,lib/modules/"$KVER"}
  cp "$BB" "$dir/bin/busybox"
  while read -r applet; do
    [[ -e $dir/$applet || -L $dir/$applet ]] && continue
    case $applet in
      bin/*) ln -s busybox "$dir/$applet" ;;
      sbin/*) ln -s ../bin/busybox "$dir/$applet" ;;
      usr/*) ln -s ../../bin/busybox "$dir/$applet" ;;
    esac
  done < <("$BB" --list-full)
  mknod -m 600 "$dir/dev/console" c 5 1
  mknod -m 666 "$dir/dev/null" c 1 3
  chmod 1777 "$dir/tmp"
  chmod 700 "$dir/root"
  local mods
  mapfile -t mods < <(module_closure "$@")
  (cd "$MODDIR" && cp --parents "${mods[@]}" modules.builtin modules.order "$dir/lib/modules/$KVER/")
  "$BB" depmod -b "$dir" "$KVER"
}

# 2. Initramfs: busybox + storage drivers + /init.
INITRD=$WORK/initramfs
populate_tree "$INITRD" "${INITRD_MODULES[@]}"
install -m 755 "$HERE/initramfs/init" "$INITRD/init"
printf '%s\n' "${INITRD_MODULES[@]}" >"$INITRD/etc/initramfs-modules"

# 3. Root filesystem: busybox init, the guest files and the generated config.
ROOT=$WORK/root
populate_tree "$ROOT" "${ROOT_MODULES[@]}"
cp -a "$HERE/rootfs/." "$ROOT/"
# The guest's I/O benchmark (hv's `make bench-hv`): static, no libraries.
command -v gcc >/dev/null || die "gcc missing (tests/setup/deps.sh installs it)"
gcc -O2 -static -Wall -o "$ROOT/usr/bin/isthmus-iobench" "$HERE/tools/iobench.c"
strip "$ROOT/usr/bin/isthmus-iobench"
mkdir -p "$ROOT/boot/grub" "$ROOT/etc/isthmus" "$ROOT/var/log" "$ROOT/var/run" "$ROOT/mnt"
echo "$HOSTNAME_" >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n%s\t%s\n' "${IP%/*}" "$HOSTNAME_" >"$ROOT/etc/hosts"
{
  echo "# Static network config bound to the NIC's MAC address (read by /etc/init.d/rcS)."
  echo "MAC=$MAC"
  echo "ADDR=$IP"
  [[ -z $GW ]] || echo "GW=$GW"
} >"$ROOT/etc/isthmus/net.conf"
cat >"$ROOT/etc/fstab" <<FSTAB
# <device>  <mount point>  <type>  <options>  <dump>  <pass>
/dev/sda1  /  ext4  defaults,errors=remount-ro  0  1
proc  /proc  proc  defaults  0  0
FSTAB
cp "$STAGE/boot/vmlinuz-$KVER" "$ROOT/boot/vmlinuz-$KVER"
cp "$STAGE/boot/config-$KVER" "$ROOT/boot/config-$KVER"
(cd "$INITRD" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) |
  gzip -9n >"$ROOT/boot/initrd.img-$KVER"
ln -s "vmlinuz-$KVER" "$ROOT/boot/vmlinuz"
ln -s "initrd.img-$KVER" "$ROOT/boot/initrd.img"

# Filesystem UUID derived from the recipe hash: same recipe, same UUID.
u=$(printf 'isthmus-test-server-root-%s' "$HASH" | sha256sum | cut -c1-32)
ROOT_UUID="${u:0:8}-${u:8:4}-4${u:13:3}-a${u:17:3}-${u:20:12}"
cat >"$ROOT/boot/grub/grub.cfg" <<GRUB
set default=0
set timeout=0
set timeout_style=hidden
insmod part_msdos
insmod ext2
set root=(hd0,msdos1)
search --no-floppy --fs-uuid --set=root $ROOT_UUID
# linux16/initrd16 (16-bit boot protocol): under TCG the kernel's decompressor
# runs ~5 s faster when entered this way than via GRUB's 32-bit \`linux\`.
menuentry "Isthmus test server ($KVER)" {
  linux16 /boot/vmlinuz-$KVER root=UUID=$ROOT_UUID ro $KERNEL_CMDLINE_EXTRA
  initrd16 /boot/initrd.img-$KVER
}
GRUB

# 4. Disk: msdos label, one bootable ext4 partition from 1 MiB, GRUB in the MBR.
RAW=$WORK/disk.raw
truncate -s "${DISK_MB}M" "$RAW"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$RAW"
LOOP=$(losetup -f --show "$RAW")
partx -a "$LOOP"
PART=${LOOP}p1
sysp=/sys/block/${LOOP#/dev/}/${LOOP#/dev/}p1/dev
for _ in $(seq 50); do [[ -e $sysp ]] && break; sleep 0.1; done
[[ -e $sysp ]] || die "no partition for $LOOP after partx -a"
if [[ ! -b $PART ]]; then # no udev here: make the node ourselves
  IFS=: read -r maj min <"$sysp"
  mknod "$PART" b "$maj" "$min"
fi
mkfs.ext4 -q -F -b 4096 -L isthmus-root -U "$ROOT_UUID" -O '^metadata_csum_seed,^orphan_file' \
  -E lazy_itable_init=0,lazy_journal_init=0 -d "$ROOT" "$PART"
MNT=$WORK/mnt
mkdir -p "$MNT"
mount "$PART" "$MNT"
# grub cannot map a loop partition to its disk by itself: tell it.
echo "(hd0) $LOOP" >"$MNT/boot/grub/device.map"
# grub finds a partition's start with `udevadm info --query path --name DEV`; on a
# host without udev, answer that question from sysfs (only that one is asked).
if ! command -v udevadm >/dev/null 2>&1; then
  mkdir -p "$WORK/bin"
  cat >"$WORK/bin/udevadm" <<'SHIM'
#!/bin/sh
for a; do dev=$a; done
n=$(basename "$(readlink -f "$dev")")
p=$(readlink -f "/sys/class/block/$n") || exit 1
echo "${p#/sys}"
SHIM
  chmod +x "$WORK/bin/udevadm"
  export PATH="$WORK/bin:$PATH"
fi
grub-install --target=i386-pc --boot-directory="$MNT/boot" --modules="part_msdos ext2 search_fs_uuid" \
  --locales= --fonts= --themes= "$LOOP" 2>&1 | grep -v '^Installation finished' >&2 || true
[[ -f $MNT/boot/grub/i386-pc/core.img ]] || die "grub-install failed"
rm -f "$MNT/boot/grub/device.map"
umount "$MNT"
MNT=
partx -d "$LOOP"
[[ ! -b $PART ]] || rm -f "$PART"
losetup -d "$LOOP"
LOOP=

# 5. Result: compressed qcow2, kernel + initrd copies, manifest; renamed into place.
OUT=$WORK/out
mkdir -p "$OUT"
# zstd, not zlib: SeaBIOS/GRUB read the kernel sector by sector over IDE PIO, and
# decompressing zlib clusters there costs ~1.5 s of boot under TCG (zstd: ~0).
qemu-img convert -c -O qcow2 -o compression_type=zstd "$RAW" "$OUT/disk.qcow2"
cp "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$OUT/initrd.img"
SIZE=$(stat -c %s "$OUT/disk.qcow2")
cat >"$OUT/manifest.json" <<JSON
{
  "hash": "$HASH",
  "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "size_bytes": $SIZE,
  "virtual_size_bytes": $((DISK_MB * 1024 * 1024)),
  "mac": "$MAC",
  "ip": "${IP%/*}",
  "ip_cidr": "$IP",
  "hostname": "$HOSTNAME_",
  "kernel": "$KVER",
  "root_uuid": "$ROOT_UUID",
  "fstab_root": "/dev/sda1",
  "kernel_cmdline": "root=UUID=$ROOT_UUID ro $KERNEL_CMDLINE_EXTRA"
}
JSON
mv -T "$OUT" "$FINAL"
log "built in $((SECONDS - START)) s: $FINAL (disk.qcow2 $((SIZE / 1024)) KiB)"
echo "$FINAL" >&3
