# shellcheck shell=bash
# Shared steps of the two Isthmus product images (appliance, cloud node).
# Sourced by image-build/{appliance,cloud-node}/build.sh, which set:
#   NAME             image name (cache dir /var/cache/isthmus/NAME-<hash>/)
#   ROLE             appliance | node (written to /etc/isthmus/role)
#   PACKAGES         Debian packages extracted into the root (with dependencies)
#   BINARIES         host paths of the Isthmus binaries to install in /usr/bin
#   ROOT_MODULES     kernel modules the root keeps (with their dependencies)
#   ROOT_MB DISK_MB  size of each root slot, whole disk size (rest = data partition)
#   APT_PREFS        apt preferences for the stage (optional; e.g. QEMU from backports)
# Techniques come from image-build/test-server/build.sh (mmdebstrap
# --variant=extract, busybox applets, fixed filesystem UUIDs derived from the
# recipe); unlike it, the disk is written without loop devices or mounts
# (mkfs.ext4 -E offset, GRUB embedded by install_grub_mbr_gap) so that two
# builds give the same bytes and parallel builds cannot race for /dev/loopN.

# shellcheck disable=SC2034 # some variables are used by the sourcing script
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CACHE_ROOT=${ISTHMUS_CACHE:-/var/cache/isthmus}
COMMON=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OVERLAY=$(cd "$COMMON/../../buildroot-overlay" && pwd)
# Storage drivers the initramfs loads, in this order.
INITRD_MODULES=(crc32c_generic crct10dif_generic crc64_rocksoft_generic sd_mod ext4
  virtio_pci virtio_blk virtio_scsi ata_piix ahci vmw_pvscsi mptspi sym53c8xx)
# Modules both images keep: storage, NICs, seed media, power button.
BASE_MODULES=("${INITRD_MODULES[@]}" e1000 e1000e 8139too 8139cp vmxnet3 pcnet32 virtio_net
  af_packet sr_mod cdrom isofs vfat nls_cp437 nls_ascii nls_utf8 button evdev)
KERNEL_CMDLINE_EXTRA="console=tty0 console=ttyS0,115200 quiet panic=10"
# Disk layout (msdos): p1 boot (GRUB config + environment), p2 root slot a,
# p3 root slot b (A/B updates, appliance/src/update/), p4 data.
BOOT_MB=16
# Ed25519 key that signs update images: it stays on the build host (never in
# an image); the image carries only the public half.
UPDATE_KEY=${ISTHMUS_UPDATE_KEY:-$CACHE_ROOT/keys/update-ed25519.pem}

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# What the Isthmus binaries are compiled from: the workspace manifest and lock,
# the crates they link and the vendored crates; their tests, benches, examples,
# fuzz targets and docs do not go into a binary. Paths relative to the checkout.
RUST_SOURCES=(Cargo.toml Cargo.lock proto netbridge hv webui appliance csc vendor
  ':(exclude)*/tests/*' ':(exclude)*/benches/*' ':(exclude)*/bench/*' ':(exclude)*/examples/*'
  ':(exclude)*/fuzz/*' ':(exclude)*.md')

# Source key: the rustc version and the content of every file in RUST_SOURCES
# (tracked, or new and not ignored) of the checkout at $1, as it is on disk.
# A fresh clone of the same tree has the same key without building anything,
# so `smoke.sh --if-cached` (make test) finds images that `make images` built
# from that tree in any checkout. Empty when $1 is not a git checkout.
source_key() { # repo
  git -C "$1" rev-parse --git-dir >/dev/null 2>&1 || return 0
  (
    cd "$1" || exit 1
    rustc -V 2>/dev/null || echo 'rustc: none'
    git ls-files -z --cached --others --exclude-standard --deduplicate -- "${RUST_SOURCES[@]}" |
      LC_ALL=C sort -zu | xargs -0 -r sha256sum 2>/dev/null || true # a deleted tracked file is just absent
  ) | sha256sum | cut -c1-16
}

# Recipe hash: the role's directory, common/, the overlay (content and mode),
# the package list, sizes, and what the binaries are: the source key when the
# build script was given no binary path (the release binaries of this checkout,
# which `make images` builds first), else the sha256 of every binary shipped. Directories
# count by name, not by where the checkout lives (a clone elsewhere, or the
# lead's check of the committed tree, finds the same cache); tests and
# measurements (smoke*.sh, bench.sh, nested-boot.sh) do not go into the image.
recipe_hash() { # dirs...
  (
    local d
    for d in "$@"; do
      (cd "$d" && find . -type f ! -name '*.md' ! -name 'smoke*.sh' ! -name 'bench.sh' ! -name 'nested-boot.sh' ! -name '.*' \
        -printf "${d##*/} %m %p\n" | LC_ALL=C sort)
      (cd "$d" && find . -type f ! -name '*.md' ! -name 'smoke*.sh' ! -name 'bench.sh' ! -name 'nested-boot.sh' ! -name '.*' -print0 |
        LC_ALL=C sort -z | xargs -0 -r sha256sum)
    done
    printf 'PREFS=%s\nSUITE=%s\nPACKAGES=%s\nROOT_MB=%s\nDISK_MB=%s\nMODULES=%s\nEPOCH=%s\nUPDATE_PUB=%s\n' \
      "${APT_PREFS:-}" "$SUITE" "${PACKAGES[*]}" "$ROOT_MB" "$DISK_MB" "${ROOT_MODULES[*]}" "$SOURCE_DATE_EPOCH" "$UPDATE_PUB"
    local b
    if [[ -n ${SOURCE_KEY:-} ]]; then
      printf 'SOURCE=%s BINARIES=' "$SOURCE_KEY"
      for b in "${BINARIES[@]}"; do printf '%s ' "$(basename "$b")"; done
      echo
    else
      for b in "${BINARIES[@]}"; do printf '%s %s\n' "$(basename "$b")" "$(sha256sum <"$b" | cut -c1-64)"; done
    fi
  ) | sha256sum | cut -c1-16
}

# The update signing key (made once per build host, 0600) and its public half
# as 64 hex digits in UPDATE_PUB.
update_key() {
  if [[ ! -f $UPDATE_KEY ]]; then
    mkdir -p "$(dirname "$UPDATE_KEY")"
    chmod 700 "$(dirname "$UPDATE_KEY")"
    (umask 077 && openssl genpkey -algorithm ed25519 -out "$UPDATE_KEY.tmp") && mv "$UPDATE_KEY.tmp" "$UPDATE_KEY"
    log "new update signing key $UPDATE_KEY (keep it: images built with another key refuse its updates)"
  fi
  UPDATE_PUB=$(openssl pkey -in "$UPDATE_KEY" -pubout -outform DER | tail -c 32 | od -An -v -tx1 | tr -d ' \n')
  [[ ${#UPDATE_PUB} == 64 ]] || die "cannot read the Ed25519 key $UPDATE_KEY"
}

# A version-4-shaped UUID derived from a string: same recipe, same UUID.
derived_uuid() {
  local u
  u=$(printf '%s' "$1" | sha256sum | cut -c1-32)
  echo "${u:0:8}-${u:8:4}-4${u:13:3}-a${u:17:3}-${u:20:12}"
}

# Sets up $WORK, the lock and the cleanup trap; returns 1 if already built
# (then $FINAL holds it).
begin_build() {
  FINAL="$CACHE_ROOT/$NAME-$HASH"
  [[ -f $FINAL/manifest.json ]] && return 1
  mkdir -p "$CACHE_ROOT"
  exec 9>"$CACHE_ROOT/.$NAME-$HASH.lock"
  flock 9
  [[ -f $FINAL/manifest.json ]] && return 1
  rm -rf "$CACHE_ROOT/.build-$NAME-$HASH."*
  WORK=$(mktemp -d "$CACHE_ROOT/.build-$NAME-$HASH.XXXXXX")
  chmod 755 "$WORK" # apt's download sandbox user must reach it
  trap build_cleanup EXIT
  trap 'exit 130' INT TERM
  return 0
}

build_cleanup() {
  local rc=$?
  set +e
  rm -rf "$WORK"
  if ((rc != 0)); then
    log "build failed (exit $rc); the messages above say which step. Network errors from"
    log "mmdebstrap: check that $MIRROR is reachable (or set MIRROR=...), then run again."
  fi
  exit "$rc"
}

# 1. Packages: extract (no maintainer scripts) the kernel, static busybox and PACKAGES.
stage_packages() {
  STAGE=$WORK/stage
  local inc
  inc=$(printf '%s,' linux-image-amd64 busybox-static "${PACKAGES[@]}")
  log "mmdebstrap: ${inc%,} ($SUITE)"
  local hook=()
  if [[ -n ${APT_PREFS:-} ]]; then
    printf '%s\n' "$APT_PREFS" >"$WORK/apt-preferences"
    hook=(--setup-hook="mkdir -p \"\$1/etc/apt/preferences.d\" && cp $WORK/apt-preferences \"\$1/etc/apt/preferences.d/isthmus\"")
  fi
  mmdebstrap --quiet --variant=extract --include="${inc%,}" "${hook[@]}" \
    --aptopt='Acquire::Retries "3"' \
    "$SUITE" "$STAGE" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main" "deb $MIRROR $SUITE-backports main"
  BB=$STAGE/bin/busybox
  [[ -x $BB ]] || die "no busybox in the stage"
  local kvers
  mapfile -t kvers < <(ls "$STAGE/lib/modules")
  ((${#kvers[@]} == 1)) || die "expected one kernel, got: ${kvers[*]}"
  KVER=${kvers[0]}
  "$BB" depmod -b "$STAGE" "$KVER"
  MODDIR=$STAGE/lib/modules/$KVER
  log "kernel $KVER"
}

# Module files (relative to $MODDIR) of the given module names with all
# dependencies; built-in modules are skipped.
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

# busybox applet links (where the tree has nothing of that name yet), device
# nodes, the given modules.
add_busybox_and_modules() { # dir module-names...
  local dir=$1 applet mods
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
  [[ -e $dir/dev/console ]] || mknod -m 600 "$dir/dev/console" c 5 1
  [[ -e $dir/dev/null ]] || mknod -m 666 "$dir/dev/null" c 1 3
  chmod 1777 "$dir/tmp"
  chmod 700 "$dir/root"
  module_closure "$@" >"$WORK/modules.list" # not in <(...): its errors must stop the build
  mapfile -t mods <"$WORK/modules.list"
  (cd "$MODDIR" && cp --parents "${mods[@]}" modules.builtin modules.builtin.modinfo modules.order "$dir/lib/modules/$KVER/")
  "$BB" depmod -b "$dir" "$KVER"
}

# 2. Initramfs: busybox + storage drivers + /init.
make_initramfs() {
  local initrd=$WORK/initramfs
  add_busybox_and_modules "$initrd" "${INITRD_MODULES[@]}"
  install -m 755 "$COMMON/initramfs-init" "$initrd/init"
  printf '%s\n' "${INITRD_MODULES[@]}" >"$initrd/etc/initramfs-modules"
  find "$initrd" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  (cd "$initrd" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible -R 0:0) |
    gzip -9n >"$WORK/initrd.img"
}

# 3. Root: the extracted packages without docs, kernel tree or firmware, busybox,
# the kept modules, the overlay, the Isthmus binaries.
make_root() {
  ROOT=$WORK/root
  cp -a "$STAGE" "$ROOT"
  rm -rf "$ROOT"/usr/share/{doc,man,info,locale,lintian,linda,bug,bash-completion,zsh} \
    "$ROOT"/lib/modules "$ROOT"/usr/lib/modules "${ROOT:?}"/boot "$ROOT"/var/cache/apt \
    "$ROOT"/var/lib/apt/lists "$ROOT"/usr/lib/x86_64-linux-gnu/gconv "$ROOT"/usr/share/i18n \
    "$ROOT"/lib/firmware "$ROOT"/usr/lib/firmware "$ROOT"/usr/share/initramfs-tools \
    "$ROOT"/etc/kernel "$ROOT"/usr/lib/linux
  mkdir -p "$ROOT/lib/modules"
  add_busybox_and_modules "$ROOT" "${ROOT_MODULES[@]}"
  cp -a "$OVERLAY/." "$ROOT/"
  mkdir -p "$ROOT"/{data,bootpart,boot,etc/isthmus,var/log,var/lib,mnt}
  echo "$ROLE" >"$ROOT/etc/isthmus/role"
  echo "$HASH" >"$ROOT/etc/isthmus/version"
  echo "$UPDATE_PUB" >"$ROOT/etc/isthmus/update-key.pub"
  local b
  for b in "${BINARIES[@]}"; do
    install -m 755 "$b" "$ROOT/usr/bin/$(basename "$b")"
    strip --strip-all "$ROOT/usr/bin/$(basename "$b")"
  done
  # The root is read-only: what changes points to /run (tmpfs) or /data.
  ln -sfn /run/resolv.conf "$ROOT/etc/resolv.conf"
  ln -sfn /run/issue "$ROOT/etc/issue"
  rm -rf "$ROOT/var/log" "$ROOT/var/tmp" "$ROOT/var/cache"
  ln -sfn /data/log "$ROOT/var/log"
  ln -sfn /data/cache "$ROOT/var/cache"
  ln -sfn /tmp "$ROOT/var/tmp"
  cat >"$ROOT/etc/fstab" <<FSTAB
# The root stays read-only; /data holds the store, keys and logs.
# (/ is slot a or b, chosen by GRUB; rcS mounts these two.)
UUID=$DATA_UUID  /data      ext4  rw,nosuid,nodev          0  2
UUID=$BOOT_UUID  /bootpart  ext4  rw,noatime,nosuid,nodev  0  0
FSTAB
  cp "$STAGE/boot/vmlinuz-$KVER" "$ROOT/boot/vmlinuz-$KVER"
  cp "$WORK/initrd.img" "$ROOT/boot/initrd.img-$KVER"
  ln -s "vmlinuz-$KVER" "$ROOT/boot/vmlinuz"
  ln -s "initrd.img-$KVER" "$ROOT/boot/initrd.img"
  # Reproducible file times.
  find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  local used
  used=$(du -sm --apparent-size "$ROOT" | cut -f1)
  log "root tree: ${used} MiB (partition ${ROOT_MB} MiB)"
  ((used + 16 < ROOT_MB)) || die "root tree ($used MiB) does not fit ROOT_MB=$ROOT_MB: raise ROOT_MB in build.sh"
}

# The boot partition's tree: GRUB modules, grub.cfg (A/B slot choice with a
# one-shot trial and fallback), the 1024-byte environment block.
make_bootpart() {
  BOOTP=$WORK/bootpart
  mkdir -p "$BOOTP/boot/grub/i386-pc"
  cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst "$BOOTP/boot/grub/i386-pc/"
  sed -e "s|@CMDLINE@|$KERNEL_CMDLINE_EXTRA|" -e "s|@ROLE@|$ROLE|" "$COMMON/grub.cfg.in" >"$BOOTP/boot/grub/grub.cfg"
  { printf '# GRUB Environment Block\nslot=a\n'; head -c 1024 /dev/zero | tr '\0' '#'; } | head -c 1024 >"$BOOTP/boot/grub/grubenv"
  find "$BOOTP" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}

# ext4 of a tree at a byte offset of a file, with every time pinned (mkfs -d
# copies each file's ctime and atime of this build: debugfs sets them).
mkfs_tree() { # file offset blocks label uuid tree
  local file=$1 off=$2 blocks=$3 label=$4 uuid=$5 tree=$6
  # E2FSPROGS_FAKE_TIME + fixed UUID and hash seed: reproducible superblocks.
  E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -b 4096 -L "$label" -U "$uuid" \
    -O '^metadata_csum_seed,^orphan_file,^has_journal' -m 0 \
    -E "offset=$off,lazy_itable_init=0,hash_seed=$uuid" -d "$tree" "$file" "$blocks"
  {
    echo 'sif / ctime @'"$SOURCE_DATE_EPOCH"
    (cd "$tree" && find . -mindepth 1 | LC_ALL=C sort | sed 's|^\.||') |
      while IFS= read -r f; do printf 'sif "%s" ctime @%s\nsif "%s" ctime_extra 0\nsif "%s" atime @%s\nsif "%s" atime_extra 0\n' \
        "$f" "$SOURCE_DATE_EPOCH" "$f" "$f" "$SOURCE_DATE_EPOCH" "$f"; done
  } >"$WORK/ctime.debugfs"
  echo "ssv wtime @$SOURCE_DATE_EPOCH" >>"$WORK/ctime.debugfs"
  E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$WORK/ctime.debugfs" "$file?offset=$off" >/dev/null 2>"$WORK/debugfs.err" ||
    die "debugfs could not set file times: $(tail -n 3 "$WORK/debugfs.err")"
}

# 4. Disk: msdos label; p1 boot, p2/p3 root slots a/b (ext4, read-only at run
# time; b starts empty), p4 data (ext4); GRUB in the MBR gap. The root
# filesystem is also kept alone (root.img): the payload of the update image.
make_disk() {
  RAW=$WORK/disk.raw
  truncate -s "${DISK_MB}M" "$RAW"
  printf 'label: dos\nlabel-id: 0x%s\nstart=2048, size=%sMiB, type=83, bootable\nsize=%sMiB, type=83\nsize=%sMiB, type=83\ntype=83\n' \
    "${HASH:0:8}" "$BOOT_MB" "$ROOT_MB" "$ROOT_MB" | sfdisk -q "$RAW"
  # Each filesystem is written straight into its partition (mkfs -E offset):
  # no loop device, no mount.
  local parts off=() blocks=() i
  parts=$(sfdisk -J "$RAW")
  for i in 0 1 2 3; do
    off[i]=$(($(jq ".partitiontable.partitions[$i].start" <<<"$parts") * 512))
    blocks[i]=$(($(jq ".partitiontable.partitions[$i].size" <<<"$parts") / 8))
  done
  mkfs_tree "$RAW" "${off[0]}" "${blocks[0]}" isthmus-boot "$BOOT_UUID" "$BOOTP"
  truncate -s "$((blocks[1] * 4096))" "$WORK/root.img"
  mkfs_tree "$WORK/root.img" 0 "${blocks[1]}" isthmus-root "$ROOT_UUID" "$ROOT"
  dd if="$WORK/root.img" of="$RAW" bs=1M seek="$((off[1] / 1048576))" conv=notrunc,sparse status=none
  E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -b 4096 -L isthmus-data -U "$DATA_UUID" \
    -O '^metadata_csum_seed,^orphan_file' \
    -E "offset=${off[3]},lazy_itable_init=0,lazy_journal_init=0,hash_seed=$DATA_UUID" "$RAW" "${blocks[3]}"
  install_grub_mbr_gap "$RAW"
}

# GRUB for SeaBIOS without mounting anything (a kernel mount would stamp times
# and place blocks differently on every build): a core image with a fixed
# prefix embedded in the gap after the MBR (sectors 1..2047), boot.img in the
# MBR with the partition table kept. What grub-bios-setup does when it embeds
# (grub util/setup.c): boot.img's BPB area and partition table come from the
# existing MBR, its kernel sector (0x5c) points at sector 1, the drive check
# (0x66) is a NOP pair for hard disks, and diskboot's blocklist (last 12 bytes
# of core.img's first sector) lists the remaining sectors from sector 2.
install_grub_mbr_gap() { # raw-disk
  grub-mkimage -O i386-pc -p '(hd0,msdos1)/boot/grub' -o "$WORK/core.img" biosdisk part_msdos ext2
  python3 - "$1" /usr/lib/grub/i386-pc/boot.img "$WORK/core.img" <<'PY'
import struct, sys
disk, boot_p, core_p = sys.argv[1:4]
boot = open(boot_p, "rb").read()
core = bytearray(open(core_p, "rb").read())
sectors = (len(core) + 511) // 512
if 1 + sectors > 2048:
    sys.exit(f"core.img ({len(core)} bytes) does not fit the 1 MiB gap before the first partition")
core += b"\0" * (sectors * 512 - len(core))
with open(disk, "r+b") as f:
    mbr = bytearray(f.read(512))
    BPB_START, BPB_END, KERNEL_SECTOR, DRIVE_CHECK, PART_START = 0x3, 0x5A, 0x5C, 0x66, 0x1B8
    mbr[0:BPB_START] = boot[0:BPB_START]
    mbr[BPB_END:PART_START] = boot[BPB_END:PART_START]
    struct.pack_into("<Q", mbr, KERNEL_SECTOR, 1)
    mbr[DRIVE_CHECK:DRIVE_CHECK + 2] = b"\x90\x90"
    start, length = struct.unpack_from("<QH", core, 0x200 - 12)
    struct.pack_into("<QH", core, 0x200 - 12, 2, sectors - 1)
    f.seek(0)
    f.write(mbr)
    f.seek(512)
    f.write(core)
PY
}

# 5. Result: compressed qcow2 (zstd: cheap to read from GRUB under TCG), manifest.
finish_image() {
  local out=$WORK/out size
  mkdir -p "$out"
  qemu-img convert -c -O qcow2 -o compression_type=zstd "$RAW" "$out/$NAME.qcow2"
  local update_json=
  if [[ $ROLE == appliance ]]; then
    # The signed update image of this build (what `isthmus update` takes).
    bash "$COMMON/sign-update.sh" "$WORK/root.img" "$HASH" "$out/$NAME-update.img" "$UPDATE_KEY"
    update_json="\"update_image\": \"$NAME-update.img\", \"update_key\": \"$UPDATE_PUB\","
  fi
  cp "$STAGE/boot/vmlinuz-$KVER" "$out/vmlinuz"
  cp "$WORK/initrd.img" "$out/initrd.img"
  size=$(stat -c %s "$out/$NAME.qcow2")
  local raw_sha qcow_sha
  raw_sha=$(sha256sum <"$RAW" | cut -c1-64)
  qcow_sha=$(sha256sum <"$out/$NAME.qcow2" | cut -c1-64)
  cat >"$out/manifest.json" <<JSON
{
  "name": "$NAME",
  "role": "$ROLE",
  "hash": "$HASH",
  "source_date_epoch": $SOURCE_DATE_EPOCH,
  "build_seconds": $((SECONDS - START)),
  "size_bytes": $size,
  "virtual_size_bytes": $((DISK_MB * 1024 * 1024)),
  "raw_sha256": "$raw_sha",
  "qcow2_sha256": "$qcow_sha",
  "kernel": "$KVER",
  "root_uuid": "$ROOT_UUID",
  "data_uuid": "$DATA_UUID",
  "boot_uuid": "$BOOT_UUID",
  "version": "$HASH",
  "root_sha256": "$(sha256sum <"$WORK/root.img" | cut -c1-64)",
  "source_key": "${SOURCE_KEY:-}",
  "binaries_sha256": {$(for b in "${BINARIES[@]}"; do printf '"%s": "%s"' "$(basename "$b")" "$(sha256sum <"$b" | cut -c1-64)"; done | sed 's/""/", "/g')},
  $update_json
  "kernel_cmdline": "root=UUID=$ROOT_UUID ro $KERNEL_CMDLINE_EXTRA"
}
JSON
  mv -T "$out" "$FINAL"
  log "built in $((SECONDS - START)) s: $FINAL ($NAME.qcow2 $((size / 1048576)) MiB)"
}

# The whole build; prints the cache directory on fd 3.
# SOURCE_KEYED=1 (set by build.sh when given no binary path) keys the image by
# source_key instead of the binaries' digests; a lookup (ISTHMUS_CACHED_ONLY)
# then needs no binaries at all.
build_product_image() { # recipe-dirs...
  local b
  SOURCE_KEY=
  [[ -z ${SOURCE_KEYED:-} ]] || SOURCE_KEY=$(source_key "$REPO")
  for b in "${BINARIES[@]}"; do
    [[ -n $SOURCE_KEY && -n ${ISTHMUS_CACHED_ONLY:-} ]] && break
    if [[ ! -x $b ]]; then
      [[ -z ${ISTHMUS_CACHED_ONLY:-} ]] || exit 3
      die "missing $b: build it first (make images runs cargo build --release)"
    fi
  done
  # A fixed default (2025-01-01): file times must not depend on when we build.
  export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1735689600}
  update_key
  HASH=$(recipe_hash "$@")
  if [[ -n ${ISTHMUS_CACHED_ONLY:-} ]]; then
    # Only answer whether this recipe is built (exit 3 if not).
    [[ -f $CACHE_ROOT/$NAME-$HASH/manifest.json ]] || exit 3
    echo "$CACHE_ROOT/$NAME-$HASH" >&3
    exit 0
  fi
  if ! begin_build; then
    echo "$FINAL" >&3
    return 0
  fi
  START=$SECONDS
  ROOT_UUID=$(derived_uuid "isthmus-$NAME-root-$HASH")
  DATA_UUID=$(derived_uuid "isthmus-$NAME-data-$HASH")
  BOOT_UUID=$(derived_uuid "isthmus-$NAME-boot-$HASH")
  log "building $FINAL"
  stage_packages
  make_initramfs
  make_root
  make_bootpart
  make_disk
  finish_image
  echo "$FINAL" >&3
}
