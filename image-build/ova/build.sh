#!/usr/bin/env bash
# Builds the appliance OVA from the appliance image: OVF 1.0 descriptor
# (appliance.ovf.in: 2 vCPU, 2 GiB, one IDE disk, a CD-ROM for the OVF
# environment, two e1000 NICs "Management" and "LAN", IP properties), a
# stream-optimized VMDK, a SHA256 manifest, in a ustar archive in the order
# DSP0243 (OVF 1.0, section 5.3) requires: descriptor first, then the
# manifest, then the disk.
# Checks: xmllint well-formedness (and the DSP8023 schema when
# OVF_SCHEMA=/path/dsp8023.xsd is given: it cannot be downloaded here),
# `qemu-img info` and `qemu-img check` on the VMDK, the manifest digests, the
# tar order, and our own importer (`isthmus import`) on the .ova when the
# binary has it.
# Cached in /var/cache/isthmus/ova-<hash>/isthmus-appliance.ova (hash over this
# directory and the appliance image's hash); the last stdout line is that dir.
# Usage: build.sh [APPLIANCE_IMAGE_DIR]   (default: what ../appliance/build.sh prints)
set -euo pipefail
exec 3>&1 1>&2

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE_ROOT=${ISTHMUS_CACHE:-/var/cache/isthmus}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1735689600}
NAME=isthmus-appliance

log() { printf 'ova: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
for c in qemu-img xmllint tar sha256sum jq python3; do
  command -v "$c" >/dev/null || die "missing $c: run tests/setup/deps.sh"
done

APP=${1:-$(bash "$HERE/../appliance/build.sh" | tail -n 1)}
[[ -f $APP/manifest.json && -f $APP/appliance.qcow2 ]] || die "no appliance image in '$APP' (make images)"
APP_HASH=$(jq -r .hash "$APP/manifest.json")
HASH=$( (
  cd "$HERE"
  find . -type f ! -name '*.md' ! -name '.*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  echo "appliance=$APP_HASH epoch=$SOURCE_DATE_EPOCH"
) | sha256sum | cut -c1-16)
FINAL=$CACHE_ROOT/ova-$HASH
if [[ -f $FINAL/$NAME.ova ]]; then
  echo "$FINAL" >&3
  exit 0
fi
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.ova-$HASH.lock"
flock 9
if [[ -f $FINAL/$NAME.ova ]]; then
  echo "$FINAL" >&3
  exit 0
fi
START=$SECONDS
WORK=$(mktemp -d "$CACHE_ROOT/.build-ova-$HASH.XXXXXX")
cleanup() {
  local rc=$?
  rm -rf "$WORK"
  ((rc == 0)) || log "failed (exit $rc); the message above says which step"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

VMDK=$NAME-disk1.vmdk
OVF=$NAME.ovf
MF=$NAME.mf
OUT=$WORK/out
mkdir -p "$OUT"

# 1. Disk: stream-optimized VMDK (what ESXi, VirtualBox and Proxmox import).
qemu-img convert -O vmdk -o subformat=streamOptimized,adapter_type=ide "$APP/appliance.qcow2" "$WORK/$VMDK"
# QEMU draws the descriptor's content ID (CID) at random: fix it (same length,
# so the embedded descriptor keeps its layout) for a reproducible digest.
python3 - "$WORK/$VMDK" "${APP_HASH:0:8}" <<'PY'
import re, sys
path, cid = sys.argv[1], sys.argv[2].encode()
with open(path, "r+b") as f:
    head = f.read(1 << 20)
    m = re.search(rb"\nCID=([0-9a-f]{8})\n", head)
    if not m:
        sys.exit("ova: no CID in the VMDK descriptor")
    f.seek(m.start(1))
    f.write(cid)
PY
info=$(qemu-img info --output=json "$WORK/$VMDK")
[[ $(jq -r .format <<<"$info") == vmdk ]] || die "qemu-img does not see a VMDK: $info"
[[ $(jq -r '."format-specific".data."create-type"' <<<"$info") == streamOptimized ]] ||
  die "VMDK is not streamOptimized: $(jq -c '."format-specific"' <<<"$info")"
CAPACITY=$(jq -r '."virtual-size"' <<<"$info")
qemu-img check -q "$WORK/$VMDK" || die "qemu-img check failed on the VMDK"
POPULATED=$(qemu-img info --output=json "$APP/appliance.qcow2" | jq -r '."actual-size"')
cp "$WORK/$VMDK" "$OUT/$VMDK"

# 2. Descriptor.
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/appliance/Cargo.toml" | head -n 1)
VERSION=${VERSION:-0.0.0}
sed -e "s|@NAME@|$NAME|g; s|@VMDK@|$VMDK|g; s|@VMDK_SIZE@|$(stat -c %s "$OUT/$VMDK")|g" \
  -e "s|@CAPACITY@|$CAPACITY|g; s|@POPULATED@|$POPULATED|g; s|@VERSION@|$VERSION|g" \
  "$HERE/appliance.ovf.in" >"$OUT/$OVF"
grep -q '@[A-Z_]*@' "$OUT/$OVF" && die "unfilled placeholder in $OVF"
xmllint --noout "$OUT/$OVF" || die "$OVF is not well-formed XML"
if [[ -n ${OVF_SCHEMA:-} ]]; then
  xmllint --noout --schema "$OVF_SCHEMA" "$OUT/$OVF" || die "$OVF does not validate against $OVF_SCHEMA"
  log "descriptor validates against $OVF_SCHEMA"
else
  log "descriptor is well-formed XML (schema check skipped: set OVF_SCHEMA=/path/to/dsp8023.xsd)"
fi

# 3. Manifest: SHA256(file)= hex, one line per file (DSP0243 1.1 section 5.1; OVF 1.0 readers accept it).
(cd "$OUT" && for f in "$OVF" "$VMDK"; do printf 'SHA256(%s)= %s\n' "$f" "$(sha256sum <"$f" | cut -c1-64)"; done) >"$OUT/$MF"

# 4. Archive: ustar, descriptor first, manifest second, disk last; fixed owner and time.
touch -d "@$SOURCE_DATE_EPOCH" "$OUT/$OVF" "$OUT/$MF" "$OUT/$VMDK"
tar --format=ustar --owner=0 --group=0 --numeric-owner --mode=0644 --mtime="@$SOURCE_DATE_EPOCH" \
  -C "$OUT" -cf "$WORK/$NAME.ova" "$OVF" "$MF" "$VMDK"
mapfile -t order < <(tar -tf "$WORK/$NAME.ova")
[[ "${order[*]}" == "$OVF $MF $VMDK" ]] || die "bad tar order: ${order[*]}"
# Manifest digests checked from the archive itself.
mkdir -p "$WORK/check"
tar -xf "$WORK/$NAME.ova" -C "$WORK/check"
while read -r line; do
  f=${line#SHA256(}
  f=${f%%)*}
  [[ "SHA256($f)= $(sha256sum <"$WORK/check/$f" | cut -c1-64)" == "$line" ]] || die "manifest mismatch for $f"
done <"$WORK/check/$MF"

# 5. Our own importer, when this binary has it.
ISTHMUS=${ISTHMUS:-$REPO/target/release/isthmus}
if [[ -x $ISTHMUS ]] && "$ISTHMUS" import --help >/dev/null 2>&1; then
  "$ISTHMUS" import --json "$WORK/$NAME.ova" >"$WORK/import.json" 2>"$WORK/import.err" ||
    die "isthmus import rejects the OVA: $(cat "$WORK/import.err")"
  jq -e --argjson cap "$CAPACITY" 'length == 1 and (.[0] | .name == "isthmus-appliance" and .cpus == 2
      and .memory_mib == 2048 and ([.nics[] | .model + "@" + .network] == ["e1000@Management", "e1000@LAN"])
      and .disks[0].capacity_bytes == $cap)' "$WORK/import.json" >/dev/null ||
    die "isthmus import reads something else than the descriptor says: $(head -c 600 "$WORK/import.json")"
  log "isthmus import agrees: $(jq -c '.[0] | {name, cpus, memory_mib, nics: [.nics[] | .model + "@" + .network], disk: .disks[0].capacity_bytes}' "$WORK/import.json")"
  cp "$WORK/import.json" "$OUT/import.json"
else
  log "importer check skipped: $ISTHMUS has no \`import\` command"
fi

mv "$WORK/$NAME.ova" "$OUT/$NAME.ova"
rm -f "$OUT/$VMDK"
SIZE=$(stat -c %s "$OUT/$NAME.ova")
cat >"$OUT/manifest.json" <<JSON
{
  "appliance_hash": "$APP_HASH",
  "hash": "$HASH",
  "ova": "$NAME.ova",
  "size_bytes": $SIZE,
  "ova_sha256": "$(sha256sum <"$OUT/$NAME.ova" | cut -c1-64)",
  "vmdk_capacity_bytes": $CAPACITY,
  "build_seconds": $((SECONDS - START))
}
JSON
mv -T "$OUT" "$FINAL"
log "built in $((SECONDS - START)) s: $FINAL/$NAME.ova ($((SIZE / 1048576)) MiB)"
echo "$FINAL" >&3
