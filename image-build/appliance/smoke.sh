#!/usr/bin/env bash
# Smoke test of the appliance image, with real parts: boots appliance.qcow2
# under QEMU (TCG) with two e1000 NICs - management and LAN - on TAPs in a
# private network namespace, an OVF environment (isthmus.ip property) on a
# vfat seed disk, and a client namespace on the management bridge. Checks:
#   1. first boot: "console: https://<ip>:443/" and the one-time admin password
#      on the serial console; HTTPS login (POST /login user+password -> 303),
#      GET / (Accept: application/json) shows the appliance
#   2. ACPI power button -> clean power-off (QEMU exits)
#   3. second boot from the same disk: no new password (the store survived),
#      the old password still logs in, the console certificate verifies
#      against the CA certificate read offline from the data partition after
#      the first power-off, and that CA certificate is unchanged afterwards
#   4. A/B update (appliance/src/update/): an update medium with a good signed
#      image switches to slot b and keeps the store; a tampered image is
#      refused; a signed image whose slot cannot start rolls back to the old
#      slot (message on the console and in the log) and is not retried; a
#      power cut while the slot is written boots the old slot with its data
#   5. bad input: bad OVF environment values are ignored with a message; a
#      full data partition (filled offline up to root's reserve after a clean
#      power-off) is reported, relieved (rotated logs removed), and the
#      appliance boots with its store and keys
#   6. cloud node image (when built): boots with a seed disk holding its
#      network settings and the one-time enrolment token (never on the kernel
#      command line), prints its bootstrap fingerprint on the serial console,
#      and its API on :8443 presents exactly that certificate
#   7. enrolment through the images: the appliance image enrols the running
#      cloud node image over the management bridge (the underlay) with
#      POST /api/clouds after an HTTPS login: a wrong token is refused (the
#      console's answer says so, the node's serial console says so, both logs
#      have it) and the node keeps waiting; the right token then enrols it,
#      the overview lists cloud1, the node refuses clients without a
#      certificate from the appliance CA, and it stays enrolled across a reboot.
#      Before that, a seed with a too-short token: the node's console says why
#      it cannot start (it retries), and the log has it
#   8. the skeleton's move through the images (smoke-move.sh): the appliance
#      image, told over HTTPS (POST /api/servers, POST /api/moves), moves the
#      test server - a disk image on its data partition - to the enrolled node
#      image: the move ends done; the node's disk holds no plaintext of it, the
#      moved disk is encrypted, and the server's QEMU ran in the node VM (nested
#      TCG) with its MAC; the server (test server BOOT=fast, IP 10.77.0.10 on
#      the LAN segment br1) answers at its IP: the move's verify step checked
#      it from the appliance's LAN address (isthmus.lan_ip, 10.77.0.2), and a
#      client host on the LAN pings it, reads its page over HTTP and has its
#      MAC in its ARP table - through the appliance image's LCG and the node
#      image's bridge only (MOVE_IP_CHECK=0 skips that, with a message)
# The password is read from the serial log into a 0600 file and never printed.
# Usage: smoke.sh [--if-cached] [APPLIANCE_IMAGE_DIR [CLOUD_NODE_IMAGE_DIR]]
#   --if-cached: run only if the image of the current recipe is built, else say
#   how to build it and exit 0 (what `make test` uses).
# Env: BOOT_TIMEOUT (180 s), QEMU_MEM (512), MOVE_TIMEOUT (600 s), GUEST_WAIT
#   (the moved guest's time to boot in the node before the node is powered off: 150 s),
#   MOVE_IP_CHECK (1; 0 skips the moved server's answer at its IP).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BOOT_TIMEOUT=${BOOT_TIMEOUT:-180}
QEMU_MEM=${QEMU_MEM:-512}
GUEST_IP=10.78.0.2
NODE_IP=10.78.0.3
CLIENT_IP=10.78.0.100
# The LAN segment (br1, the appliance's second NIC): the appliance's own LAN
# address (OVF property isthmus.lan_ip), a client host, the moved server.
LAN_APPLIANCE_IP=10.77.0.2
LAN_CLIENT_IP=10.77.0.100

log() { printf 'smoke-images: %s\n' "$*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}

IF_CACHED=
if [[ ${1:-} == --if-cached ]]; then
  IF_CACHED=1
  shift
fi
NODE_IMG=
if [[ $# -ge 1 ]]; then
  IMG=$1
  NODE_IMG=${2:-}
elif [[ -n $IF_CACHED ]]; then
  if ! IMG=$(ISTHMUS_CACHED_ONLY=1 bash "$HERE/build.sh" 2>/dev/null | tail -n 1) || [[ -z $IMG ]]; then
    log "skipped: the appliance image of this tree is not built (build it with \`make images\`, then \`make smoke-images\`)"
    exit 0
  fi
else
  IMG=$(bash "$HERE/build.sh" | tail -n 1)
fi
if [[ -z $NODE_IMG ]]; then
  NODE_IMG=$(ISTHMUS_CACHED_ONLY=1 bash "$HERE/../cloud-node/build.sh" 2>/dev/null | tail -n 1) || NODE_IMG=
fi

[[ $(id -u) == 0 ]] || die "must run as root (network namespaces, TAP): sudo make smoke-images"
for c in qemu-system-x86_64 qemu-img ip curl jq mkfs.vfat mcopy openssl socat debugfs dumpe2fs e2fsck sfdisk od; do
  command -v "$c" >/dev/null || die "missing $c (run tests/setup/deps.sh)"
done
[[ -c /dev/net/tun ]] || die "no /dev/net/tun"
[[ -f $IMG/appliance.qcow2 ]] || die "no appliance.qcow2 in '$IMG' (build with make images)"
log "image $IMG"

T_START=$EPOCHREALTIME
PFX="isth-img-$$"
NS_SW=$PFX-sw # bridges + the guest's TAPs
NS_CL=$PFX-cl # the admin's browser
NS_LAN=$PFX-lan # a client host on the LAN segment
TMP=$(mktemp -d "/tmp/$PFX.XXXXXX")
chmod 700 "$TMP"
QEMU_PID=
NODE_PID=
ROUND=

stop_qemu() { # by the PID we started, only
  [[ -n $QEMU_PID ]] || return 0
  if kill -0 "$QEMU_PID" 2>/dev/null; then
    kill "$QEMU_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$QEMU_PID" 2>/dev/null || true
  fi
  wait "$QEMU_PID" 2>/dev/null || true
  QEMU_PID=
}
cleanup() {
  local rc=$?
  set +e
  stop_qemu
  if [[ -n $NODE_PID ]]; then # the cloud node's QEMU, by the PID we started
    kill "$NODE_PID" 2>/dev/null
    wait "$NODE_PID" 2>/dev/null
  fi
  ip netns del "$NS_SW" 2>/dev/null
  ip netns del "$NS_CL" 2>/dev/null
  ip netns del "$NS_LAN" 2>/dev/null
  if ((rc != 0)) && [[ -n $ROUND && -f $TMP/serial-$ROUND.log ]]; then
    log "serial console of round $ROUND (last 25 lines, password lines hidden):"
    tr -d '\r' <"$TMP/serial-$ROUND.log" | grep -v 'password (user' | tail -n 25 | sed 's/^/  | /' >&2
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=SCRIPTDIR/smoke-move.sh
. "$HERE/smoke-move.sh"

# Network: [client ns: vcl 10.78.0.100] - [sw ns: br0 = vsw + tap0 (mgmt)],
# br1 = tap1 (LAN) + vlsw - [LAN client ns: vl 10.77.0.100]
ip netns add "$NS_SW"
ip netns add "$NS_CL"
ip netns add "$NS_LAN"
ip -n "$NS_SW" link add br0 type bridge
ip -n "$NS_SW" link add br1 type bridge
ip -n "$NS_SW" link add vsw type veth peer name vcl netns "$NS_CL"
ip -n "$NS_SW" link set vsw master br0
for t in tap0 tap1; do ip -n "$NS_SW" tuntap add dev "$t" mode tap; done
ip -n "$NS_SW" link set tap0 master br0
ip -n "$NS_SW" link set tap1 master br1
for l in br0 br1 vsw tap0 tap1 lo; do ip -n "$NS_SW" link set "$l" up; done
ip -n "$NS_CL" addr add "$CLIENT_IP/24" dev vcl
ip -n "$NS_CL" link set vcl up
ip -n "$NS_CL" link set lo up
ip -n "$NS_SW" link add vlsw type veth peer name vl netns "$NS_LAN"
ip -n "$NS_SW" link set vlsw master br1
ip -n "$NS_SW" link set vlsw up
ip -n "$NS_LAN" addr add "$LAN_CLIENT_IP/24" dev vl
ip -n "$NS_LAN" link set vl up
ip -n "$NS_LAN" link set lo up

# The appliance's disk: a qcow2 overlay over the cached image, kept across both boots.
qemu-img create -q -f qcow2 -b "$IMG/appliance.qcow2" -F qcow2 "$TMP/disk.qcow2"
# Seed: the OVF environment (what a hypervisor hands over from the OVA's properties).
cat >"$TMP/ovf-env.xml" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"
    xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" oe:id="isthmus">
  <PropertySection>
    <Property oe:key="isthmus.ip" oe:value="$GUEST_IP/24"/>
    <Property oe:key="isthmus.gateway" oe:value=""/>
    <Property oe:key="isthmus.hostname" oe:value="isthmus-smoke"/>
    <Property oe:key="isthmus.lan_ip" oe:value="$LAN_APPLIANCE_IP/24"/>
  </PropertySection>
</Environment>
XML
mkfs.vfat -C -n CIDATA "$TMP/seed.img" 1024 >/dev/null
mcopy -i "$TMP/seed.img" "$TMP/ovf-env.xml" ::ovf-env.xml

EXTRA_DRIVES=()
ALLOW_FAILED=
SEED_IMG=$TMP/seed.img
boot() { # boot <round>: starts QEMU, waits for the console URL; sets T_URL
  ROUND=$1
  local serial=$TMP/serial-$ROUND.log t0 i
  log "round $ROUND: booting"
  t0=$EPOCHREALTIME
  ip netns exec "$NS_SW" qemu-system-x86_64 -accel tcg -m "$QEMU_MEM" -smp 1 \
    -name "isthmus-appliance-smoke-$ROUND" -display none -monitor none -nodefaults -vga none \
    -serial "file:$serial" -qmp "unix:$TMP/qmp.sock,server=on,wait=off" \
    -drive "file=$TMP/disk.qcow2,format=qcow2,if=ide,index=0" \
    -drive "file=$SEED_IMG,format=raw,if=ide,index=1" "${EXTRA_DRIVES[@]}" \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device e1000,netdev=n0,mac=52:54:00:78:00:02 \
    -netdev tap,id=n1,ifname=tap1,script=no,downscript=no -device e1000,netdev=n1,mac=52:54:00:78:01:02 \
    </dev/null >"$TMP/qemu-$ROUND.out" 2>&1 &
  QEMU_PID=$!
  T_URL=
  for ((i = 0; i < ${ROUND_TIMEOUT:-$BOOT_TIMEOUT} * 10; i++)); do
    if grep -qa '^console: https://' "$serial" 2>/dev/null; then
      T_URL=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
      break
    fi
    [[ -z $ALLOW_FAILED ]] && grep -qa 'ISTHMUS-FAILED' "$serial" 2>/dev/null && die "round $ROUND: $(grep -a ISTHMUS-FAILED "$serial" | tr -d '\r')"
    kill -0 "$QEMU_PID" 2>/dev/null || die "round $ROUND: QEMU exited early: $(cat "$TMP/qemu-$ROUND.out")"
    sleep 0.1
  done
  [[ -n $T_URL ]] || die "round $ROUND: no console URL on the serial line within ${ROUND_TIMEOUT:-$BOOT_TIMEOUT} s"
  local url
  url=$(grep -a '^console: https://' "$serial" | tr -d '\r' | tail -n 1)
  [[ -z ${NEED_LINE:-} ]] || wait_serial "$NEED_LINE" 60
  [[ $url == "console: https://$GUEST_IP:443/" ]] || die "round $ROUND: unexpected console line '$url'"
  log "round $ROUND: QEMU start -> console URL: $T_URL s ($url)"
  grep -qa '^isthmus: seed on ' "$serial" || die "round $ROUND: the seed (OVF environment) was not found"
  grep -qa '^ready: local API' "$serial" || sleep 1
}

curl_cl() { ip netns exec "$NS_CL" curl -sS -k --max-time 20 "$@"; }

login() { # login <round>: POST /login with the saved password, GET / as JSON
  local code
  rm -f "$TMP/jar"
  code=$(curl_cl -c "$TMP/jar" -b "$TMP/jar" -o "$TMP/login.out" -w '%{http_code}' \
    --data-binary "@$TMP/login.form" "https://$GUEST_IP/login") || die "round $ROUND: POST /login failed"
  [[ $code == 303 ]] || die "round $ROUND: POST /login answered $code, want 303: $(head -c 300 "$TMP/login.out")"
  code=$(curl_cl -b "$TMP/jar" -H 'Accept: application/json' -o "$TMP/overview.json" -w '%{http_code}' \
    "https://$GUEST_IP/") || die "round $ROUND: GET / failed"
  [[ $code == 200 ]] || die "round $ROUND: GET / answered $code: $(head -c 300 "$TMP/overview.json")"
  jq -e '.appliance | type == "object"' "$TMP/overview.json" >/dev/null ||
    die "round $ROUND: GET / JSON has no appliance: $(head -c 300 "$TMP/overview.json")"
  log "round $ROUND: login OK (303), overview: appliance $(jq -c .appliance "$TMP/overview.json" | head -c 200)"
}

# Files from the data partition (partition 4) of a powered-off disk, read
# with debugfs: no loop device or mount needed.
data_files() { # disk.qcow2 path out [path out ...]
  local disk=$1 start
  shift
  qemu-img convert -O raw "$disk" "$TMP/disk.raw"
  start=$(sfdisk -J "$TMP/disk.raw" | jq '.partitiontable.partitions[3].start')
  dd if="$TMP/disk.raw" of="$TMP/data.part" bs=512 skip="$start" conv=sparse status=none
  rm -f "$TMP/disk.raw"
  while (($# >= 2)); do
    debugfs -R "cat $1" "$TMP/data.part" >"$2" 2>/dev/null
    shift 2
  done
  rm -f "$TMP/data.part"
}

# The appliance CA certificate as stored on the data partition (and its logs).
ca_pem_from_disk() { # out-file
  data_files "$TMP/disk.qcow2" /isthmus/pki/ca.pem "$1" /log/messages "$TMP/messages" /log/isthmus.log "$TMP/isthmus.log"
  grep -q 'BEGIN CERTIFICATE' "$1" || die "round $ROUND: no CA certificate on the data partition"
}

# The cloud node's log, from its data partition.
node_log_from_disk() { # out-file
  data_files "$TMP/node.qcow2" /log/isthmus-node.log "$1"
}

# Verifies the console's certificate against a CA certificate.
console_cert_signed_by() { # ca.pem
  ip netns exec "$NS_CL" openssl s_client -connect "$GUEST_IP:443" </dev/null 2>/dev/null |
    openssl x509 >"$TMP/console.pem" 2>/dev/null || die "round $ROUND: cannot read the console certificate"
  openssl verify -CAfile "$1" -partial_chain "$TMP/console.pem" >/dev/null 2>&1
}

# ACPI power button over QMP; waits until that QEMU exits.
power_button() { # qmp-socket pid
  local i
  printf '{"execute":"qmp_capabilities"}\n{"execute":"system_powerdown"}\n' |
    socat -t 2 - "UNIX-CONNECT:$1" >/dev/null || die "round $ROUND: QMP system_powerdown failed"
  for ((i = 0; i < 300; i++)); do kill -0 "$2" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$2" 2>/dev/null && die "round $ROUND: still running 30 s after the ACPI power button"
  wait "$2" 2>/dev/null || true
  log "round $ROUND: powered off cleanly"
}
powerdown() { # the appliance
  power_button "$TMP/qmp.sock" "$QEMU_PID"
  QEMU_PID=
}

# Round 1: first boot.
boot first
T_FIRST=$T_URL
pw=$(grep -a '^one-time admin password (user admin): ' "$TMP/serial-first.log" | tr -d '\r' | tail -n 1 | sed 's/.*: //')
[[ -n $pw ]] || die "first boot: no one-time admin password on the serial console"
(
  umask 077
  printf 'user=admin&password=%s' "$(jq -rn --arg p "$pw" '$p|@uri')" >"$TMP/login.form"
)
unset pw
login
# The appliance's own LAN address (isthmus.lan_ip) answers a LAN host, through
# the LAN NIC and the image's bridge lan0 (the LCG's port is its veth lcg0).
grep -qaF "LAN eth1: appliance address $LAN_APPLIANCE_IP/24 on bridge lan0; the LCG uses lcg0" "$TMP/serial-first.log" ||
  die "round first: the LAN address (isthmus.lan_ip) was not set up: $(grep -a 'LAN' "$TMP/serial-first.log" | tr -d '\r' | tail -n 2)"
ip netns exec "$NS_LAN" ping -c 2 -W 5 "$LAN_APPLIANCE_IP" >/dev/null ||
  die "round first: the appliance does not answer ping at its LAN address $LAN_APPLIANCE_IP"
log "round first: the appliance answers at its LAN address $LAN_APPLIANCE_IP (bridge lan0 on eth1; LCG on lcg0)"
powerdown
ca_pem_from_disk "$TMP/ca-1.pem"
log "round first: CA certificate on the data partition: sha256 $(sha256sum <"$TMP/ca-1.pem" | cut -c1-16)…"

# Round 2: reboot from the same disk.
boot second
T_SECOND=$T_URL
if grep -qa 'one-time admin password' "$TMP/serial-second.log"; then
  die "second boot printed a new one-time password: the store did not survive the reboot"
fi
login
console_cert_signed_by "$TMP/ca-1.pem" ||
  die "second boot: the console certificate is not signed by the first boot's CA: the keys did not survive"
log "round second: console certificate signed by the first boot's CA; store and keys survived the reboot"
powerdown
ca_pem_from_disk "$TMP/ca-2.pem"
cmp -s "$TMP/ca-1.pem" "$TMP/ca-2.pem" || die "the CA certificate on the data partition changed between boots"

# Round 3..6: A/B updates. The update images are made here from the build's
# signed update (its root filesystem, changed with debugfs and signed again
# with the build host's key, as a release would be).
wait_serial() { # pattern seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    grep -qaE "$1" "$TMP/serial-$ROUND.log" 2>/dev/null && return 0
    kill -0 "$QEMU_PID" 2>/dev/null || die "round $ROUND: QEMU exited while waiting for '$1'"
    sleep 0.1
  done
  die "round $ROUND: no '$1' on the serial line within $2 s"
}
expect_serial() { # pattern what
  grep -qaE "$1" "$TMP/serial-$ROUND.log" || die "round $ROUND: $2 (no '$1' on the serial line)"
}
UPD=$IMG/appliance-update.img
[[ -f $UPD ]] || die "no appliance-update.img in $IMG (rebuild with make images)"
hdr=$(head -n 2 "$UPD" | wc -c)
tail -c +$((hdr + 1)) "$UPD" >"$TMP/root.img"
make_update() { # version out [debugfs-commands...]
  local v=$1 out=$2
  shift 2
  cp --sparse=always "$TMP/root.img" "$TMP/root-$v.img"
  echo "$v" >"$TMP/version"
  debugfs -w -f - "$TMP/root-$v.img" >/dev/null 2>&1 <<CMDS
rm /etc/isthmus/version
write $TMP/version /etc/isthmus/version
$(printf '%s\n' "$@")
CMDS
  bash "$HERE/../common/sign-update.sh" "$TMP/root-$v.img" "$v" "$TMP/upd-$v.img"
  rm -f "$TMP/root-$v.img"
  medium "$TMP/upd-$v.img" "$out"
}
medium() { # update-image out: a vfat disk holding isthmus-update.img
  local mib=$(($(stat -c %s "$1") / 1048576 + 16))
  rm -f "$2"
  mkfs.vfat -C -n ISTHMUS-UPD "$2" $((mib * 1024)) >/dev/null
  mcopy -i "$2" "$1" ::isthmus-update.img
  rm -f "$1"
}
medium_drive() { EXTRA_DRIVES=(-drive "file=$1,format=raw,if=ide,index=2"); }
ROUND_TIMEOUT=$((BOOT_TIMEOUT * 3)) # rounds with an update: boot, write the slot, boot again

# Round 3: a good update: slot a -> b, confirmed once the appliance is up.
make_update smoke-v2 "$TMP/m2.img"
medium_drive "$TMP/m2.img"
NEED_LINE='UPDATE CONFIRMED: slot b \(version smoke-v2\)'
t_upd=$EPOCHREALTIME
boot update
NEED_LINE=
expect_serial 'update: writing slot b' "the update was not written to slot b"
expect_serial 'rebooting into the updated slot' "no reboot into the new slot"
grep -qa 'one-time admin password' "$TMP/serial-update.log" && die "round update: a new one-time password: the store was lost"
login
T_UPDATE=$(awk -v a="$t_upd" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
log "round update: smoke-v2 written to slot b, booted, confirmed; same password logs in (store kept); ${T_UPDATE} s"
powerdown
rm -f "$TMP/m2.img"

# Round 4: a tampered update (one payload byte flipped) and bad OVF values.
make_update smoke-v5 "$TMP/m5.img"
mcopy -i "$TMP/m5.img" ::isthmus-update.img "$TMP/u5.img"
printf '\xff' | dd of="$TMP/u5.img" bs=1 seek=$(($(stat -c %s "$TMP/u5.img") - 4096)) conv=notrunc status=none
medium "$TMP/u5.img" "$TMP/m5.img"
medium_drive "$TMP/m5.img"
mkdir -p "$TMP/bad-env"
# shellcheck disable=SC2016 # $(reboot) is the bad value, kept literal
sed -e 's|oe:key="isthmus.gateway" oe:value=""|oe:key="isthmus.gateway" oe:value="10.78.0.300"|' \
  -e 's|oe:key="isthmus.hostname" oe:value="isthmus-smoke"|oe:key="isthmus.hostname" oe:value="Bad_Host;rm"|' \
  -e 's|oe:key="isthmus.lan_ip" oe:value="[^"]*"|oe:key="isthmus.lan_ip" oe:value="10.77.0.300/24"|' \
  -e 's|</PropertySection>|  <Property oe:key="isthmus.dns" oe:value="not-an-ip"/>\n    <Property oe:key="isthmus.ntp" oe:value="$(reboot)"/>\n  </PropertySection>|' \
  "$TMP/ovf-env.xml" >"$TMP/bad-env/ovf-env.xml"
mkfs.vfat -C -n CIDATA "$TMP/badseed.img" 1024 >/dev/null
mcopy -i "$TMP/badseed.img" "$TMP/bad-env/ovf-env.xml" ::ovf-env.xml
SEED_IMG=$TMP/badseed.img
boot refused
expect_serial 'UPDATE REFUSED: .*SHA-256' "the tampered update was not refused with its digest"
expect_serial "ignoring bad gateway '10.78.0.300'" "bad OVF gateway not reported"
expect_serial "ignoring bad hostname 'Bad_Host;rm'" "bad OVF hostname not reported"
expect_serial "ignoring bad LAN address '10.77.0.300/24'" "bad OVF LAN address not reported"
expect_serial "ignoring bad DNS server 'not-an-ip'" "bad OVF DNS server not reported"
expect_serial "ignoring bad NTP server" "bad OVF NTP server not reported"
login
log "round refused: tampered update refused (digest), bad OVF values reported and ignored, login OK"
powerdown
SEED_IMG=$TMP/seed.img
rm -f "$TMP/m5.img" "$TMP/badseed.img"

# Round 5: a signed update whose slot cannot start (no /sbin/init): written to
# slot a, tried once, rolled back to slot b; not applied again.
make_update smoke-v3 "$TMP/m3.img" "rm /sbin/init"
medium_drive "$TMP/m3.img"
ALLOW_FAILED=1
NEED_LINE='already failed to come up'
boot rollback
NEED_LINE=
ALLOW_FAILED=
expect_serial 'update: writing slot a' "the update was not written to slot a"
expect_serial 'ISTHMUS-UPDATE-SLOT-BROKEN' "the broken slot did not say why it cannot start"
expect_serial 'UPDATE FAILED: slot a \(version smoke-v3\) did not come up; rolled back to slot b \(version smoke-v2\)' "no rollback message"
login
log "round rollback: broken slot a tried once, rolled back to slot b with a message; not retried; login OK"
powerdown
rm -f "$TMP/m3.img"

# Round 6: power cut while slot a is written; the next boot runs slot b with its data.
make_update smoke-v4 "$TMP/m4.img"
medium_drive "$TMP/m4.img"
ROUND='cut'
ip netns exec "$NS_SW" qemu-system-x86_64 -accel tcg -m "$QEMU_MEM" -smp 1 -display none -monitor none -nodefaults -vga none \
  -serial "file:$TMP/serial-cut.log" -drive "file=$TMP/disk.qcow2,format=qcow2,if=ide,index=0" \
  -drive "file=$SEED_IMG,format=raw,if=ide,index=1" "${EXTRA_DRIVES[@]}" \
  -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device e1000,netdev=n0,mac=52:54:00:78:00:02 \
  </dev/null >"$TMP/qemu-cut.out" 2>&1 &
QEMU_PID=$!
wait_serial 'update: writing slot a' "$BOOT_TIMEOUT"
sleep 2
kill -9 "$QEMU_PID"
wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=
log "round cut: QEMU killed (power cut) while slot a was being written"
EXTRA_DRIVES=()
boot aftercut
expect_serial 'UPDATE INTERRUPTED: writing version smoke-v4 into slot a did not finish' "no message about the interrupted update"
login
powerdown
ca_pem_from_disk "$TMP/ca-3.pem"
cmp -s "$TMP/ca-1.pem" "$TMP/ca-3.pem" || die "the CA certificate changed across the updates"
grep -q 'UPDATE INTERRUPTED' "$TMP/messages" || die "the interrupted update is not in /data/log/messages"
grep -q 'UPDATE FAILED: slot a' "$TMP/messages" || die "the rollback is not in /data/log/messages"
log "round aftercut: old slot b booted with its data (same CA, same password); both messages in /data/log/messages"

# Round 7: a full data partition (a log flood left rotated logs until only
# root's reserve was free): rcS removes rotated logs, says so, the appliance
# boots with its data. Filled offline with debugfs (no loop device, no mount).
ROUND='full'
qemu-img convert -O raw "$TMP/disk.qcow2" "$TMP/disk.raw"
start=$(sfdisk -J "$TMP/disk.raw" | jq '.partitiontable.partitions[3].start')
size=$(sfdisk -J "$TMP/disk.raw" | jq '.partitiontable.partitions[3].size')
dd if="$TMP/disk.raw" of="$TMP/data.part" bs=512 skip="$start" count="$size" conv=sparse status=none
# A clean power-off leaves nothing to recover; say so if it did not.
e2fsck -fy "$TMP/data.part" >"$TMP/e2fsck0.out" 2>&1 || true
grep -q 'recovering journal' "$TMP/e2fsck0.out" && die "round full: the data partition was not unmounted cleanly at power-off (its journal needed recovery)"
free=$(dumpe2fs -h "$TMP/data.part" 2>/dev/null | awk -F: '/^Free blocks/ { print $2 + 0 }')
reserved=$(dumpe2fs -h "$TMP/data.part" 2>/dev/null | awk -F: '/^Reserved block count/ { print $2 + 0 }')
head -c $(((free - reserved) * 4096 - 4 * 1048576)) /dev/urandom >"$TMP/filler"
debugfs -w -R "write $TMP/filler /log/messages.2" "$TMP/data.part" >"$TMP/debugfs.out" 2>&1
rm -f "$TMP/filler"
# debugfs leaves the group summaries to e2fsck (as after any offline edit).
e2fsck -fy "$TMP/data.part" >"$TMP/e2fsck.out" 2>&1 || true
left=$(dumpe2fs -h "$TMP/data.part" 2>/dev/null | awk -F: '/^Free blocks/ { print $2 + 0 }')
((left < reserved + 2048)) || die "round full: could not fill the data partition ($left blocks free): $(tail -n 3 "$TMP/debugfs.out")"
log "round full: data partition filled offline: $left blocks free, root reserve $reserved"
dd if="$TMP/data.part" of="$TMP/disk.raw" bs=512 seek="$start" conv=notrunc,sparse status=none
rm -f "$TMP/data.part" "$TMP/disk.qcow2"
qemu-img convert -O qcow2 "$TMP/disk.raw" "$TMP/disk.qcow2"
rm -f "$TMP/disk.raw"
boot full
expect_serial 'WARNING: the data partition is [0-9]+% full \(rotated logs removed\)' "no message about the full data partition"
login
console_cert_signed_by "$TMP/ca-1.pem" || die "round full: the console certificate is not signed by the first boot's CA"
log "round full: full data partition reported and relieved (rotated logs removed); store and keys kept, login OK"
powerdown

# Round 8: the cloud node image with its seed (network settings + token),
# enrolled by the appliance image over the underlay (the management bridge):
# the admin logs in over HTTPS and enrols it with POST /api/clouds, first with
# a wrong token (refused with a message on both sides; the node keeps waiting),
# then with the right one; the node then refuses clients without a certificate
# from the appliance's CA, and a reboot keeps its enrolment.
T_NODE=null
T_ENROL=null
if [[ -n $NODE_IMG && -f $NODE_IMG/cloud-node.qcow2 ]]; then
  log "round node: booting $NODE_IMG"
  mkdir -m 700 "$TMP/nodeseed"
  (
    umask 077
    head -c 32 /dev/urandom | base64 >"$TMP/nodeseed/token"
    printf 'ip=%s/24\nhostname=cloud1\n' "$NODE_IP" >"$TMP/nodeseed/isthmus.conf"
  )
  mkfs.vfat -C -n CIDATA "$TMP/nodeseed.img" 1024 >/dev/null
  mcopy -i "$TMP/nodeseed.img" "$TMP/nodeseed/token" "$TMP/nodeseed/isthmus.conf" ::
  qemu-img create -q -f qcow2 -b "$NODE_IMG/cloud-node.qcow2" -F qcow2 "$TMP/node.qcow2"
  ip -n "$NS_SW" tuntap add dev tap2 mode tap
  ip -n "$NS_SW" link set tap2 master br0
  ip -n "$NS_SW" link set tap2 up
  node_boot() { # round: starts the node's QEMU (NODE_PID), serial in serial-<round>.log
    ip netns exec "$NS_SW" qemu-system-x86_64 -accel tcg -m 1024 -smp 1 \
      -name "isthmus-node-smoke-$1" -display none -monitor none -nodefaults -vga none \
      -serial "file:$TMP/serial-$1.log" -qmp "unix:$TMP/qmp-node.sock,server=on,wait=off" \
      -drive "file=$TMP/node.qcow2,format=qcow2,if=ide,index=0" \
      -drive "file=$NODE_SEED,format=raw,if=ide,index=1" \
      -netdev tap,id=n0,ifname=tap2,script=no,downscript=no -device e1000,netdev=n0,mac=52:54:00:78:00:03 \
      </dev/null >"$TMP/qemu-$1.out" 2>&1 &
    NODE_PID=$!
  }
  node_wait() { # pattern seconds: waits for a line on the node's serial console
    local i
    for ((i = 0; i < $2 * 10; i++)); do
      grep -qaE "$1" "$TMP/serial-$NODE_ROUND.log" 2>/dev/null && return 0
      kill -0 "$NODE_PID" 2>/dev/null || die "round $NODE_ROUND: the node's QEMU exited: $(cat "$TMP/qemu-$NODE_ROUND.out")"
      sleep 0.1
    done
    die "round $NODE_ROUND: no '$1' on the node's serial line within $2 s"
  }
  # First a seed whose token is too short to be safe: the node says why it
  # cannot start on its console (and keeps retrying) instead of failing quietly.
  printf 'short-token\n' >"$TMP/short.token"
  mkfs.vfat -C -n CIDATA "$TMP/nodeseed-bad.img" 1024 >/dev/null
  mcopy -i "$TMP/nodeseed-bad.img" "$TMP/nodeseed/isthmus.conf" ::
  mcopy -i "$TMP/nodeseed-bad.img" "$TMP/short.token" ::token
  NODE_SEED=$TMP/nodeseed-bad.img
  NODE_ROUND=nodebad
  ROUND=nodebad
  node_boot nodebad
  node_wait '^isthmus: node: .*shorter than 16 characters' "$BOOT_TIMEOUT"
  node_wait '^isthmus: node: Error: cannot start the node' 5
  log "round nodebad: a too-short token on the seed: the node's console says why it cannot start"
  power_button "$TMP/qmp-node.sock" "$NODE_PID"
  NODE_PID=
  NODE_SEED=$TMP/nodeseed.img
  NODE_ROUND=node
  ROUND=node
  t0=$EPOCHREALTIME
  node_boot node
  node_wait '^bootstrap fingerprint: sha256:' "$BOOT_TIMEOUT"
  fp=$(grep -a '^bootstrap fingerprint: sha256:' "$TMP/serial-node.log" | tr -d '\r' | tail -n 1 | sed 's/.*sha256://')
  T_NODE=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  log "round node: QEMU start -> bootstrap fingerprint: $T_NODE s"
  grep -qa 'seed on .*token' "$TMP/serial-node.log" || die "round node: the token on the seed disk was not found"
  got=
  for ((i = 0; i < 100; i++)); do
    got=$(ip netns exec "$NS_CL" openssl s_client -connect "$NODE_IP:8443" </dev/null 2>/dev/null |
      openssl x509 -outform DER 2>/dev/null | sha256sum | cut -c1-64) || got=
    [[ $got == "$fp" ]] && break
    sleep 0.3
  done
  [[ $got == "$fp" ]] || die "round node: the API on $NODE_IP:8443 presents $got, the console said $fp"
  log "round node: API at https://$NODE_IP:8443 presents the printed bootstrap certificate"

  # The appliance (same disk as all rounds above) enrols the node; the disk of
  # the server it then moves there is put on its data partition first.
  move_prepare
  boot enrol
  login
  enrol() { # token-file out: POST /api/clouds as the logged-in admin; prints the HTTP status
    (
      umask 077
      jq -n --arg u "https://$NODE_IP:8443" --arg f "sha256:$fp" --rawfile t "$1" \
        '{name: "cloud1", url: $u, fingerprint: $f, token: ($t | rtrimstr("\n"))}' >"$TMP/enrol.json"
    )
    curl_cl -b "$TMP/jar" -H 'Content-Type: application/json' -H 'Accept: application/json' \
      -o "$2" -w '%{http_code}' --data-binary "@$TMP/enrol.json" "https://$GUEST_IP/api/clouds"
    rm -f "$TMP/enrol.json"
  }
  (
    umask 077
    head -c 32 /dev/urandom | base64 >"$TMP/wrong.token"
  )
  code=$(enrol "$TMP/wrong.token" "$TMP/enrol-wrong.json") || die "round enrol: POST /api/clouds (wrong token) failed"
  [[ $code =~ ^(4|5) ]] || die "round enrol: a wrong token was answered $code: $(head -c 300 "$TMP/enrol-wrong.json")"
  jq -e '.error | test("token does not match")' "$TMP/enrol-wrong.json" >/dev/null ||
    die "round enrol: the console's answer to a wrong token does not say so: $(head -c 300 "$TMP/enrol-wrong.json")"
  NODE_ROUND=node
  node_wait 'ENROLMENT REFUSED: an appliance tried to enrol this node with a wrong token' 30
  log "round enrol: wrong token refused ($code: $(jq -c . "$TMP/enrol-wrong.json" | head -c 240)); the node's console says so"
  t_en=$EPOCHREALTIME
  code=$(enrol "$TMP/nodeseed/token" "$TMP/enrol-ok.json") || die "round enrol: POST /api/clouds failed"
  [[ $code == 200 ]] || die "round enrol: enrolment with the right token answered $code: $(head -c 300 "$TMP/enrol-ok.json")"
  T_ENROL=$(awk -v a="$t_en" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  jq -e '.name == "cloud1"' "$TMP/enrol-ok.json" >/dev/null || die "round enrol: unexpected answer $(head -c 300 "$TMP/enrol-ok.json")"
  node_wait 'ENROLLED: this node now accepts only clients with certificates' 30
  curl_cl -b "$TMP/jar" -H 'Accept: application/json' -o "$TMP/overview.json" "https://$GUEST_IP/" ||
    die "round enrol: GET / failed"
  jq -e '.clouds | map(select(.name == "cloud1")) | length == 1' "$TMP/overview.json" >/dev/null ||
    die "round enrol: cloud1 not in the overview: $(jq -c .clouds "$TMP/overview.json")"
  if ip netns exec "$NS_CL" curl -sk --max-time 10 "https://$NODE_IP:8443/v1/node" 2>/dev/null | grep -q accel; then
    die "round enrol: the enrolled node answered a client without a certificate"
  fi
  log "round enrol: retry with the right token enrolled cloud1 in $T_ENROL s ($(jq -c . "$TMP/enrol-ok.json"));" \
    "the node refuses anonymous clients now"
  move_run
  ROUND=enrol
  t_guest=${T_MOVE_END:-$EPOCHREALTIME}
  powerdown
  ca_pem_from_disk "$TMP/ca-4.pem"
  grep -q 'token does not match' "$TMP/messages" "$TMP/isthmus.log" 2>/dev/null ||
    die "round enrol: the refused enrolment is not in the appliance's log"

  # The node: power-off (once the moved guest had GUEST_WAIT s to boot in
  # it), then a boot from the same disk keeps the enrolment.
  ROUND=node
  left=$(awk -v a="$t_guest" -v b="$EPOCHREALTIME" -v w="${GUEST_WAIT:-150}" 'BEGIN { d = w - (b - a); print (d > 0 ? int(d) : 0) }')
  [[ $IP_CHECKED == true ]] && left=0 # it is up: it answered on the LAN
  log "round move: giving web1 ${left} s more to boot in the node before its power-off"
  sleep "$left"
  power_button "$TMP/qmp-node.sock" "$NODE_PID"
  NODE_PID=
  move_check_node
  node_log_from_disk "$TMP/node-1.log"
  grep -q 'enrolment attempt with a wrong token' "$TMP/node-1.log" || die "round node: the wrong token is not in the node's log"
  grep -q 'enrolment finished' "$TMP/node-1.log" || die "round node: the enrolment is not in the node's log"
  grep -q 'shorter than 16 characters' "$TMP/node-1.log" || die "round node: the too-short token is not in the node's log"
  NODE_ROUND=noderb
  ROUND=noderb
  node_boot noderb
  node_wait '^node API: https://' "$BOOT_TIMEOUT"
  sleep 5
  grep -qa '^bootstrap fingerprint' "$TMP/serial-noderb.log" && die "round noderb: the node forgot its enrolment at reboot"
  anon=$(ip netns exec "$NS_CL" curl -sk --max-time 10 "https://$NODE_IP:8443/v1/node" 2>&1) || true
  grep -q accel <<<"$anon" && die "round noderb: the rebooted node answered a client without a certificate"
  log "round noderb: the node rebooted enrolled (no bootstrap fingerprint, no anonymous access)"
  kill "$NODE_PID" 2>/dev/null || true
  wait "$NODE_PID" 2>/dev/null || true
  NODE_PID=
else
  log "round node: skipped (no cloud node image built: make images)"
fi
ROUND=
T_ALL=$(awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
log "PASS in ${T_ALL} s: boot to console URL ${T_FIRST} s (first boot), ${T_SECOND} s (reboot); update round ${T_UPDATE} s; cloud node to fingerprint ${T_NODE} s; enrolment ${T_ENROL} s; move through the images ${T_MOVE} s (guest kernel seen: $GUEST_KERNEL; ping + ARP at its IP on the LAN after ${T_PING} s; ping + ARP + HTTP checked: $IP_CHECKED)"
printf '{"boot_to_url_first_s": %s, "boot_to_url_reboot_s": %s, "update_round_s": %s, "node_boot_to_fingerprint_s": %s, "enrol_s": %s, "move_s": %s, "guest_kernel_seen": %s, "moved_ip_ping_s": %s, "moved_ip_checked": %s, "moved_ip_answer_s": %s, "smoke_s": %s}\n' \
  "$T_FIRST" "$T_SECOND" "$T_UPDATE" "$T_NODE" "$T_ENROL" "$T_MOVE" "$GUEST_KERNEL" "$T_PING" "$IP_CHECKED" "$T_ANSWER" "$T_ALL"
