#!/usr/bin/env bash
# Host-side LUKS layout benchmark (no guest): which disk layout QEMU 10
# encrypts fastest here, and what bounds it.
#
# Layouts (each a 512 MiB image filled with data, on the same file system):
#   plain       qcow2
#   qcow2-luks  qcow2 with encrypt.format=luks (what hv makes today)
#   luks-qcow2  the `luks` block driver above a plain qcow2 node (the LUKS
#               header and ciphertext inside the qcow2's guest view)
#   qcow2-luks-batched  the qcow2-luks image again, the daemon started with
#               hv's batched-XTS library in LD_PRELOAD (hv/preload/, what hv
#               does when it finds it; built here with gcc)
# Each is served by qemu-storage-daemon (cache.direct=on, aio=threads, the
# same basis for all) over an NBD unix socket, and fio's nbd engine runs
# 4k randread/randwrite and 1M read/write at QD16, ROUNDS rounds, layouts
# interleaved, medians reported. Then xts-speed.c measures the cipher the
# way QEMU calls it (per 512-byte sector). Last line: one JSON object.
#
# Usage: make bench-hv-layouts, or bash hv/bench/luks-layouts.sh (root;
# ROUNDS=3 RUNTIME=4 by default; the README figures: ROUNDS=5; LAYOUTS="plain
# qcow2-luks qcow2-luks-batched" picks a subset).
# The bench key is random, lives in a shell variable and reaches QEMU through
# a pipe (/dev/fd/3): never argv, environment or a file.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-4}
SIZE_MIB=512
HERE=$(cd "$(dirname "$0")" && pwd)

need=()
command -v fio >/dev/null || need+=(fio)
command -v qemu-storage-daemon >/dev/null || need+=(qemu-utils)
command -v gcc >/dev/null || need+=(gcc)
[ -e /usr/include/nettle/xts.h ] || need+=(nettle-dev)
[ -e /usr/include/gnutls/crypto.h ] || need+=(libgnutls28-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "this fio has no nbd engine; install Debian's fio (built with libnbd)" >&2; exit 1; }

# O_DIRECT needs a real file system: /var/tmp, not a tmpfs /tmp.
WORK=$(mktemp -d /var/tmp/isthmus-luks-layouts.XXXXXX)
QSD_PID=
cleanup() {
  if [ -n "$QSD_PID" ]; then kill "$QSD_PID" 2>/dev/null || true; wait "$QSD_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"
KEY=$(head -c 32 /dev/urandom | base64)
key() { printf %s "$KEY"; }

blockdev() {
  case $1 in
  plain) echo "driver=qcow2,node-name=d,file.driver=file,file.filename=$WORK/plain.qcow2,file.cache.direct=on,file.aio=threads" ;;
  qcow2-luks | qcow2-luks-batched) echo "driver=qcow2,node-name=d,encrypt.format=luks,encrypt.key-secret=k,file.driver=file,file.filename=$WORK/qcow2-luks.qcow2,file.cache.direct=on,file.aio=threads" ;;
  luks-qcow2) echo "driver=luks,node-name=d,key-secret=k,file.driver=qcow2,file.file.driver=file,file.file.filename=$WORK/luks-qcow2.qcow2,file.file.cache.direct=on,file.file.aio=threads" ;;
  esac
}

echo "making images (${SIZE_MIB} MiB each) in $WORK" >&2
qemu-img create -q -f qcow2 plain.qcow2 ${SIZE_MIB}M
qemu-img create -q --object secret,id=k,file=/dev/fd/3 -f qcow2 \
  -o encrypt.format=luks,encrypt.key-secret=k,encrypt.iter-time=10 qcow2-luks.qcow2 ${SIZE_MIB}M 3< <(key)
qemu-img create -q --object secret,id=k,file=/dev/fd/3 -f luks -o key-secret=k,iter-time=10 luks.raw ${SIZE_MIB}M 3< <(key)
qemu-img convert -q -f raw -O qcow2 luks.raw luks-qcow2.qcow2
rm -f luks.raw
# hv's batched XTS (hv/preload/xts-batch.c), as build.rs builds it.
gcc -O2 -fPIC -shared -fvisibility=hidden -Wl,--version-script="$HERE/../preload/xts-batch.map" \
  -o "$WORK/libisthmus-xts.so" "$HERE/../preload/xts-batch.c" "$HERE/../preload/xts-fast.c" -ldl
read -r -a LAYOUTS <<<"${LAYOUTS:-plain qcow2-luks qcow2-luks-batched luks-qcow2}"
for l in plain qcow2-luks luks-qcow2; do
  # Fill through the layout, so reads decrypt real ciphertext.
  qemu-io --object secret,id=k,file=/dev/fd/3 --image-opts -t none \
    -c "write -q -P 0x5a 0 $((SIZE_MIB - 1))M" "$(blockdev "$l")" 3< <(key)
done

JOBS=("randread 4k" "randwrite 4k" "read 1M" "write 1M")
: >results.txt
run_layout() {
  local l=$1 sock=$WORK/nbd.sock
  rm -f "$sock"
  local preload=()
  [[ $l == *-batched ]] && preload=(env LD_PRELOAD="$WORK/libisthmus-xts.so")
  "${preload[@]}" qemu-storage-daemon --object secret,id=k,file=/dev/fd/3 --blockdev "$(blockdev "$l")" \
    --nbd-server addr.type=unix,addr.path="$sock" --export type=nbd,id=e,node-name=d,name=x,writable=on 3< <(key) &
  QSD_PID=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || { echo "qemu-storage-daemon did not start for $l" >&2; exit 1; }
  for j in "${JOBS[@]}"; do
    set -- $j
    # The daemon's CPU time (utime + stime, ticks) around the job: CPU per
    # GiB moved does not depend on what else the machine runs.
    local ticks0 ticks1
    ticks0=$(awk '{ print $14 + $15 }' "/proc/$QSD_PID/stat")
    # terse v3: field 6/7/8 read KiB, KiB/s, IOPS; 47/48/49 the same for writes.
    fio --name=j --ioengine=nbd --uri="nbd+unix:///x?socket=$sock" --rw="$1" --bs="$2" --iodepth=16 \
      --size=$((SIZE_MIB - 8))M --time_based --runtime="$RUNTIME" --output-format=terse --terse-version=3 2>/dev/null >fio.txt
    ticks1=$(awk '{ print $14 + $15 }' "/proc/$QSD_PID/stat")
    awk -F';' -v l="$l" -v rw="$1" -v bs="$2" -v ticks=$((ticks1 - ticks0)) -v hz="$(getconf CLK_TCK)" '$1 == "3" {
        if (rw ~ /read/) { iops = $8; kib = $7; total = $6 } else { iops = $49; kib = $48; total = $47 }
        if (bs == "4k") print l, rw "_" bs, iops; else printf "%s %s_%s %.0f\n", l, rw, bs, kib / 1024
        if (bs == "1M" && total > 0) printf "%s %s_cpu_ms_per_gib %.0f\n", l, rw, ticks * 1000 / hz / (total / 1048576) }' fio.txt >>results.txt
  done
  kill "$QSD_PID"
  wait "$QSD_PID" 2>/dev/null || true
  QSD_PID=
}
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
for r in $(seq "$ROUNDS"); do
  for l in "${LAYOUTS[@]}"; do
    echo "round $r/$ROUNDS: $l" >&2
    run_layout "$l"
  done
done
LOAD_AFTER=$(cut -d' ' -f1 /proc/loadavg)

median() { # layout figure
  awk -v l="$1" -v f="$2" '$1 == l && $2 == f { print $3 }' results.txt | sort -n |
    awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

gcc -O2 -o xts-speed "$HERE/xts-speed.c" -lnettle -lgnutls
CIPHER=$(./xts-speed)
BATCHED=$(LD_PRELOAD="$WORK/libisthmus-xts.so" ./xts-speed | awk '$1 == "nettle_xts" { print $2 }')
cipher() { echo "$CIPHER" | awk -v n="$1" '$1 == n { print $2 }'; }

printf '%-18s %14s %15s %14s %15s %16s %17s\n' layout "4k randread" "4k randwrite" "1M read MiB/s" "1M write MiB/s" \
  "read CPU ms/GiB" "write CPU ms/GiB"
json="{\"bench\":\"hv-luks-layouts\",\"qemu\":\"$(qemu-img --version | head -1 | awk '{print $3}')\",\"rounds\":$ROUNDS,\"runtime_s\":$RUNTIME,\"load1_before\":$LOAD_BEFORE,\"load1_after\":$LOAD_AFTER"
for l in "${LAYOUTS[@]}"; do
  rr=$(median "$l" randread_4k); rw=$(median "$l" randwrite_4k); sr=$(median "$l" read_1M); sw=$(median "$l" write_1M)
  rc=$(median "$l" read_cpu_ms_per_gib); wc=$(median "$l" write_cpu_ms_per_gib)
  printf '%-18s %14s %15s %14s %15s %16s %17s\n' "$l" "$rr" "$rw" "$sr" "$sw" "$rc" "$wc"
  k=${l//-/_}
  json+=",\"${k}_randread_iops\":$rr,\"${k}_randwrite_iops\":$rw,\"${k}_seq_read_mibps\":$sr,\"${k}_seq_write_mibps\":$sw"
  json+=",\"${k}_seq_read_cpu_ms_per_gib\":$rc,\"${k}_seq_write_cpu_ms_per_gib\":$wc"
done
echo "cipher per core, 512-byte sectors (MiB/s): $(echo "$CIPHER" | tr '\n' ' ')batched_xts $BATCHED"
json+=",\"nettle_xts512_mibps\":$(cipher nettle_xts),\"gnutls_xts512_mibps\":$(cipher gnutls_xts),\"aes_ecb512_mibps\":$(cipher aes_ecb),\"batched_xts512_mibps\":$BATCHED}"
echo "$json"
