#!/usr/bin/env bash
# Smoke test of the test source server image, with real parts: builds (or finds)
# the cached image, then boots it under QEMU (TCG) twice - disk on IDE, then on
# SATA/AHCI - with an e1000 NIC on a TAP in a Linux bridge inside a private
# network namespace, and checks from a second "client" namespace:
#   ISTHMUS-READY on the serial console within 60 s, the facts over HTTP
#   (hostname, mac, ip, iface, root_disk=sda, root_dev=/dev/sda1, serial, client),
#   the gratuitous ARP (client learns the guest MAC before any traffic), the
#   client's ARP entry after the request, and an ACPI power-down via QMP
#   (QEMU exits within 20 s).
# Usage: smoke.sh [CACHE_DIR]   (default: the directory build.sh prints)
# Exits non-zero on any failed check. Cleans up namespaces and its QEMU.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
READY_TIMEOUT=${READY_TIMEOUT:-60}
POWERDOWN_TIMEOUT=${POWERDOWN_TIMEOUT:-20}
SMBIOS_SERIAL=SMOKE-1

log() { printf 'smoke: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (network namespaces, TAP)"
for c in qemu-system-x86_64 ip curl socat jq; do
  command -v "$c" >/dev/null || die "missing $c (run tests/setup/deps.sh)"
done
[[ -c /dev/net/tun ]] || die "no /dev/net/tun"

if [[ $# -ge 1 ]]; then
  IMG=$1
else
  IMG=$(bash "$HERE/build.sh" | tail -n 1)
fi
[[ -f $IMG/disk.qcow2 && -f $IMG/manifest.json ]] || die "no image in '$IMG'"
MAC=$(jq -r .mac "$IMG/manifest.json")
GUEST_IP=$(jq -r .ip "$IMG/manifest.json")
PREFIX=$(jq -r '.ip_cidr // "x/24"' "$IMG/manifest.json")
PREFIX=${PREFIX#*/}
HOSTNAME_=$(jq -r .hostname "$IMG/manifest.json")
CLIENT_IP=${CLIENT_IP:-${GUEST_IP%.*}.100}
log "image $IMG (hostname=$HOSTNAME_ mac=$MAC ip=$GUEST_IP)"

PFX="isth-smk-$$"
NS_SW=$PFX-sw # bridge + the guest's TAP
NS_CL=$PFX-cl # the client
TMP=$(mktemp -d "/tmp/$PFX.XXXXXX")
QEMU_PID=
ROUND=

cleanup() {
  local rc=$?
  set +e
  stop_qemu
  ip netns del "$NS_SW" 2>/dev/null
  ip netns del "$NS_CL" 2>/dev/null
  if ((rc != 0)) && [[ -n $ROUND && -f $TMP/serial-$ROUND.log ]]; then
    log "serial console of round $ROUND (last 30 lines):"
    tail -n 30 "$TMP/serial-$ROUND.log" | tr -d '\r' | sed 's/^/  | /' >&2
  fi
  rm -rf "$TMP"
  exit "$rc"
}

# Stops the QEMU this script started (by its PID only).
stop_qemu() {
  [[ -n $QEMU_PID ]] || return 0
  if kill -0 "$QEMU_PID" 2>/dev/null; then
    kill "$QEMU_PID" 2>/dev/null
    for _ in $(seq 20); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$QEMU_PID" 2>/dev/null
  fi
  wait "$QEMU_PID" 2>/dev/null
  QEMU_PID=
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Network: [client ns: veth vcl 10.77.0.100] <-> [sw ns: vsw + tap0 in bridge br0] <-> guest
ip netns add "$NS_SW"
ip netns add "$NS_CL"
ip -n "$NS_SW" link add br0 type bridge
ip -n "$NS_SW" link add vsw type veth peer name vcl netns "$NS_CL"
ip -n "$NS_SW" link set vsw master br0
ip -n "$NS_SW" tuntap add dev tap0 mode tap
ip -n "$NS_SW" link set tap0 master br0
for l in br0 vsw tap0 lo; do ip -n "$NS_SW" link set "$l" up; done
ip -n "$NS_CL" addr add "$CLIENT_IP/$PREFIX" dev vcl
ip -n "$NS_CL" link set vcl up
ip -n "$NS_CL" link set lo up
# Let the client learn neighbours from gratuitous ARP, so that we can see the guest's.
ip netns exec "$NS_CL" sysctl -qw net.ipv4.conf.vcl.arp_accept=1

qmp() { # qmp <command>: runs one QMP command on this round's socket
  printf '{"execute":"qmp_capabilities"}\n{"execute":"%s"}\n' "$1" |
    socat -t 2 - "UNIX-CONNECT:$TMP/qmp-$ROUND.sock" >"$TMP/qmp-$ROUND.out"
  grep -q '"return"' "$TMP/qmp-$ROUND.out"
}

expect_line() { # expect_line <file> <exact line>
  grep -qxF -- "$2" "$1" || die "round $ROUND: expected line '$2' in the HTTP answer, got: $(tr '\n' ' ' <"$1")"
}

run_round() { # run_round <name> <qemu disk device args...>
  ROUND=$1
  shift
  local serial=$TMP/serial-$ROUND.log t0 t_ready t_off i answer=$TMP/http-$ROUND.txt
  ip -n "$NS_CL" neigh flush dev vcl
  log "round $ROUND: booting ($*)"
  t0=$EPOCHREALTIME
  # `ip netns exec` execs QEMU, so $! is QEMU's PID.
  ip netns exec "$NS_SW" qemu-system-x86_64 -accel tcg -m 256 -smp 1 \
    -name "isthmus-smoke-$ROUND" -display none -monitor none -nodefaults -vga none \
    -serial "file:$serial" -qmp "unix:$TMP/qmp-$ROUND.sock,server=on,wait=off" \
    -snapshot -drive "file=$IMG/disk.qcow2,format=qcow2,if=none,id=d0" "$@" \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device "e1000,netdev=n0,mac=$MAC" \
    -smbios "type=1,serial=$SMBIOS_SERIAL" \
    </dev/null >"$TMP/qemu-$ROUND.out" 2>&1 &
  QEMU_PID=$!

  t_ready=
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    if grep -qa ISTHMUS-READY "$serial" 2>/dev/null; then
      t_ready=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
      break
    fi
    if grep -qa ISTHMUS-FAILED "$serial" 2>/dev/null; then
      die "round $ROUND: guest reported $(grep -a ISTHMUS-FAILED "$serial" | tr -d '\r')"
    fi
    kill -0 "$QEMU_PID" 2>/dev/null || die "round $ROUND: QEMU exited early: $(cat "$TMP/qemu-$ROUND.out")"
    sleep 0.1
  done
  [[ -n $t_ready ]] || die "round $ROUND: no ISTHMUS-READY within ${READY_TIMEOUT} s"
  log "round $ROUND: QEMU start -> ISTHMUS-READY: ${t_ready} s"

  local facts
  facts=$(grep -a '^ISTHMUS-FACTS ' "$serial" | tr -d '\r' | tail -n 1)
  [[ $facts == "ISTHMUS-FACTS hostname=$HOSTNAME_ mac=$MAC ip=$GUEST_IP iface="*" root_disk=sda root_dev=/dev/sda1 serial=$SMBIOS_SERIAL" ]] ||
    die "round $ROUND: unexpected console facts: $facts"
  log "round $ROUND: console: $facts"

  # Gratuitous ARP: the client learns the guest's MAC before sending it anything.
  local neigh=
  for ((i = 0; i < 50; i++)); do
    neigh=$(ip -n "$NS_CL" neigh show "$GUEST_IP" dev vcl)
    [[ $neigh == *"lladdr $MAC"* ]] && break
    sleep 0.1
  done
  [[ $neigh == *"lladdr $MAC"* ]] || die "round $ROUND: no gratuitous ARP from the guest seen by the client (neigh: '$neigh')"
  log "round $ROUND: gratuitous ARP seen: $neigh"

  ip netns exec "$NS_CL" curl -sS --max-time 10 -D "$TMP/http-$ROUND.hdr" -o "$answer" "http://$GUEST_IP/" ||
    die "round $ROUND: HTTP request to $GUEST_IP failed"
  tr -d '\r' <"$TMP/http-$ROUND.hdr" | grep -qi '^content-type: text/plain' ||
    die "round $ROUND: not text/plain: $(tr -d '\r' <"$TMP/http-$ROUND.hdr" | tr '\n' ' ')"
  expect_line "$answer" "hostname=$HOSTNAME_"
  expect_line "$answer" "mac=$MAC"
  expect_line "$answer" "ip=$GUEST_IP"
  expect_line "$answer" "root_disk=sda"
  expect_line "$answer" "root_dev=/dev/sda1"
  expect_line "$answer" "serial=$SMBIOS_SERIAL"
  expect_line "$answer" "client=$CLIENT_IP"
  grep -qx 'iface=..*' "$answer" || die "round $ROUND: no iface in the HTTP answer"
  [[ $(wc -l <"$answer") -eq 8 ]] || die "round $ROUND: expected 8 lines, got: $(tr '\n' ' ' <"$answer")"
  log "round $ROUND: HTTP: $(tr '\n' ' ' <"$answer")"

  neigh=$(ip -n "$NS_CL" neigh show "$GUEST_IP" dev vcl)
  [[ $neigh == *"lladdr $MAC"* ]] || die "round $ROUND: client ARP entry for $GUEST_IP is '$neigh', want $MAC"

  # ACPI power button: the guest must power off and QEMU exit.
  t0=$EPOCHREALTIME
  qmp system_powerdown || die "round $ROUND: QMP system_powerdown failed: $(cat "$TMP/qmp-$ROUND.out")"
  t_off=
  for ((i = 0; i < POWERDOWN_TIMEOUT * 10; i++)); do
    if ! kill -0 "$QEMU_PID" 2>/dev/null; then
      t_off=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
      break
    fi
    sleep 0.1
  done
  [[ -n $t_off ]] || die "round $ROUND: QEMU still running ${POWERDOWN_TIMEOUT} s after system_powerdown"
  wait "$QEMU_PID" 2>/dev/null || true
  QEMU_PID=
  grep -qa ISTHMUS-POWERDOWN "$serial" || die "round $ROUND: QEMU exited but the guest's acpid handler did not run"
  log "round $ROUND: system_powerdown -> QEMU exit: ${t_off} s"
  RESULTS+=("$ROUND: ready ${t_ready} s, powerdown ${t_off} s")
}

RESULTS=()
run_round ide -device ide-hd,drive=d0,bus=ide.0,unit=0
run_round sata -device ahci,id=ahci0 -device ide-hd,drive=d0,bus=ahci0.0
ROUND=
log "PASS"
for r in "${RESULTS[@]}"; do log "  $r"; done
