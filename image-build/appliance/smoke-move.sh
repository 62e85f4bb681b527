# shellcheck shell=bash disable=SC2034 # ROUND, T_MOVE, GUEST_KERNEL are read by smoke.sh
# The skeleton's move through the images, sourced by smoke.sh (uses its TMP,
# boot/login/curl_cl/power_button helpers, GUEST_IP and NS_* names).
#
# The source server is the test server's disk (image-build/test-server) as a
# raw image on the appliance's data partition (/data/sources/web1.img), put
# there offline with debugfs: the appliance image runs no guests (no QEMU, only
# qemu-img to read the disk), so the server is described to it as a stopped
# data-center server whose disk it can read: the test server's BOOT=fast
# recipe (Debian's cloud kernel, a command line for nested TCG: see
# test-server/README.md), IDE disk, vmxnet3 NIC, IP 10.77.0.10. The smoke's
# copy of that disk carries a random plaintext marker file (/srv/marker.txt).
#
# move_prepare: before the appliance's enrolment boot, writes the disk.
# move_run:     with the appliance up and cloud1 enrolled: POST /api/servers,
#               POST /api/moves over HTTPS, polls GET /moves/{id} until the
#               move ends; asserts it ends `done` with the steps that ran, the
#               node's own report of the start (accelerator, NIC model + MAC)
#               and the server's location cloud1 in the overview.
# move_check_lan: waits (MOVE_IP_WAIT) until the moved server answers a
#               client on the LAN segment, which then pings it, GETs its page
#               (names web1, its MAC and IP) and has its MAC in its ARP table;
#               with MOVE_IP_CHECK=verify the move's verify step checked the
#               server's IP (TCP 80, ARP) from the appliance's LAN address first.
# move_check_node: after the node's power-off: no byte of the marker anywhere
#               on the node's disk, the moved disk is LUKS-encrypted qcow2,
#               the node's log has the guest's QEMU start (pid), its guest
#               table the server's MAC, its shutdown stopped the guest's
#               QEMU still running in it, and the guest's serial console (hv's
#               serial.log on the node) shows its kernel booting (noted, not
#               failed, when nested TCG under load has not got there yet).

SERVER_MAC=52:54:00:12:34:56
SERVER_IP=10.77.0.10 # the test server's address, on the LAN segment (br1)
MOVE_TIMEOUT=${MOVE_TIMEOUT:-600}
T_MOVE=null
GUEST_KERNEL=false
# The moved server's answer at its IP through the images (the appliance's LCG
# on its LAN NIC, the node's bridge), MOVE_IP_CHECK:
#   lan (default): checked from a client on the LAN segment, waiting up to
#     MOVE_IP_WAIT (420 s) after the move for the nested guest to boot. The
#     description has no IP, so the move's verify step says "not checked": it
#     waits at most 180 s (appliance/src/moves/effects.rs ANSWER_TIMEOUT), and
#     the nested TCG boot took longer than that under load here (README.md).
#   verify: the description has the IP and port 80, so the move's verify step
#     checks it from the appliance's LAN address (the move fails and rolls back
#     if the guest does not answer within those 180 s), then as with lan.
#   0: skipped, with a message.
MOVE_IP_CHECK=${MOVE_IP_CHECK:-lan}
MOVE_IP_WAIT=${MOVE_IP_WAIT:-420}
IP_CHECKED=false
IP_TIMED_OUT=
T_PING=null
T_MOVE_END=
T_ANSWER=null

move_prepare() {
  local ts start
  # BOOT=fast: the test server's recipe with the kernel command line that
  # reaches user space soonest under nested TCG (test-server/README.md).
  ts=$(BOOT=fast bash "$HERE/../test-server/build.sh" | tail -n 1) || die "round move: cannot build the test server image"
  jq -e --arg m "$SERVER_MAC" --arg ip "$SERVER_IP" '.mac == $m and .ip == $ip' "$ts/manifest.json" >/dev/null ||
    die "round move: the test server image has another MAC or IP than $SERVER_MAC $SERVER_IP"
  qemu-img convert -O raw "$ts/disk.qcow2" "$TMP/web1.img"
  # The marker (random per run) and, when the IP is not checked, a kernel
  # command line without `quiet` (its kernel's first lines then show on its
  # console; with the IP check the console's ISTHMUS-READY line does, and
  # `quiet` saves the nested guest the slow serial output), on the server's
  # root partition (partition 1), edited offline.
  MARK="ISTHMUS-SMOKE-PLAINTEXT-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
  printf '%s\n' "$MARK" >"$TMP/marker.txt"
  start=$(sfdisk -J "$TMP/web1.img" | jq '.partitiontable.partitions[0].start')
  local size
  size=$(sfdisk -J "$TMP/web1.img" | jq '.partitiontable.partitions[0].size')
  dd if="$TMP/web1.img" of="$TMP/web1.part" bs=1M iflag=skip_bytes,count_bytes skip=$((start * 512)) count=$((size * 512)) conv=sparse status=none
  local unquiet='s/ quiet / /'
  [[ $MOVE_IP_CHECK == 0 ]] || unquiet=
  debugfs -R "cat /boot/grub/grub.cfg" "$TMP/web1.part" 2>/dev/null | sed "$unquiet" >"$TMP/grub.cfg"
  grep -q 'console=ttyS0' "$TMP/grub.cfg" || die "round move: unexpected grub.cfg on the test server's disk"
  debugfs -w -f - "$TMP/web1.part" >"$TMP/debugfs-web1.out" 2>&1 <<CMDS
write $TMP/marker.txt /srv/marker.txt
rm /boot/grub/grub.cfg
write $TMP/grub.cfg /boot/grub/grub.cfg
CMDS
  e2fsck -fy "$TMP/web1.part" >/dev/null 2>&1 || true
  # Written back whole (not conv=sparse): a block debugfs rewrote with zeros
  # in it must not keep the old bytes there (ext4 checksums cover them).
  dd if="$TMP/web1.part" of="$TMP/web1.img" bs=1M oflag=seek_bytes seek=$((start * 512)) conv=notrunc status=none
  rm -f "$TMP/web1.part" "$TMP/marker.txt" "$TMP/grub.cfg"
  grep -qa "$MARK" "$TMP/web1.img" || die "round move: the marker is not on the source disk: $(tail -n 3 "$TMP/debugfs-web1.out")"
  # Onto the appliance's data partition (partition 4), offline.
  qemu-img convert -O raw "$TMP/disk.qcow2" "$TMP/disk.raw"
  start=$(sfdisk -J "$TMP/disk.raw" | jq '.partitiontable.partitions[3].start')
  size=$(sfdisk -J "$TMP/disk.raw" | jq '.partitiontable.partitions[3].size')
  dd if="$TMP/disk.raw" of="$TMP/data.part" bs=1M iflag=skip_bytes,count_bytes skip=$((start * 512)) count=$((size * 512)) conv=sparse status=none
  debugfs -w -f - "$TMP/data.part" >"$TMP/debugfs-src.out" 2>&1 <<CMDS
mkdir /sources
write $TMP/web1.img /sources/web1.img
CMDS
  e2fsck -fy "$TMP/data.part" >/dev/null 2>&1 || true
  debugfs -R "stat /sources/web1.img" "$TMP/data.part" 2>/dev/null | grep -q 'Size: 268435456' ||
    die "round move: /sources/web1.img not written to the data partition: $(tail -n 3 "$TMP/debugfs-src.out")"
  dd if="$TMP/data.part" of="$TMP/disk.raw" bs=1M oflag=seek_bytes seek=$((start * 512)) conv=notrunc status=none
  rm -f "$TMP/data.part" "$TMP/disk.qcow2"
  qemu-img convert -O qcow2 "$TMP/disk.raw" "$TMP/disk.qcow2"
  rm -f "$TMP/disk.raw" "$TMP/web1.img"
  log "round move: the test server's disk (with a random plaintext marker) is /data/sources/web1.img on the appliance"
}

api_post() { # path json-file out: POST as the logged-in admin; prints the HTTP status
  curl_cl -b "$TMP/jar" -H 'Content-Type: application/json' -H 'Accept: application/json' \
    -o "$3" -w '%{http_code}' --data-binary "@$2" "https://$GUEST_IP$1"
}

move_run() {
  local code id state i t0
  ROUND=move
  local ip=null
  case $MOVE_IP_CHECK in
    verify) ip="\"$SERVER_IP\"" ;;
    lan) ;;
    0) log "round move: SKIP the moved server's answer at its IP (MOVE_IP_CHECK=0)" ;;
    *) die "round move: bad MOVE_IP_CHECK=$MOVE_IP_CHECK (lan, verify or 0)" ;;
  esac
  jq -n --arg mac "$SERVER_MAC" --argjson ip "$ip" '{
    name: "web1",
    profile: {
      cpus: 1, memory_mib: 256,
      disks: [{bus: "ide", unit: 0, boot: true}],
      nics: [{model: "vmxnet3", mac: $mac, pci_slot: "03.0"}],
      smbios: {serial: "WEB1-SN-0001", manufacturer: "Isthmus Lab"}
    },
    source: {kind: "local-qemu", disks: ["/data/sources/web1.img"], taps: ["tap-web1"]}
  } + (if $ip == null then {} else {ip: $ip, check_ports: [80]} end)' >"$TMP/web1.json"
  code=$(api_post /api/servers "$TMP/web1.json" "$TMP/server.out") || die "round move: POST /api/servers failed"
  [[ $code == 200 ]] || die "round move: POST /api/servers answered $code: $(head -c 400 "$TMP/server.out")"
  jq -e '.name == "web1" and .location == "dc" and .state == "stopped"' "$TMP/server.out" >/dev/null ||
    die "round move: unexpected server row $(head -c 300 "$TMP/server.out")"
  # A move to a cloud nobody enrolled is refused with 404 before anything runs.
  jq -n '{server: "web1", to: "cloud9"}' >"$TMP/move.json"
  code=$(api_post /api/moves "$TMP/move.json" "$TMP/move.out") || die "round move: POST /api/moves failed"
  [[ $code == 404 ]] || die "round move: a move to an unknown cloud answered $code: $(head -c 300 "$TMP/move.out")"
  jq -n '{server: "web1", to: "cloud1"}' >"$TMP/move.json"
  t0=$EPOCHREALTIME
  code=$(api_post /api/moves "$TMP/move.json" "$TMP/move.out") || die "round move: POST /api/moves failed"
  [[ $code == 200 ]] || die "round move: POST /api/moves answered $code: $(head -c 400 "$TMP/move.out")"
  id=$(jq -r .id "$TMP/move.out")
  log "round move: web1 added over HTTPS; move $id to cloud1 started"
  state=
  for ((i = 0; i < MOVE_TIMEOUT / 2; i++)); do
    curl_cl -b "$TMP/jar" -H 'Accept: application/json' -o "$TMP/mv.json" "https://$GUEST_IP/moves/$id" || true
    state=$(jq -r '.state // empty' "$TMP/mv.json" 2>/dev/null) || state=
    [[ $state == running || -z $state ]] || break
    sleep 2
  done
  T_MOVE_END=$EPOCHREALTIME
  T_MOVE=$(awk -v a="$t0" -v b="$T_MOVE_END" 'BEGIN { printf "%.1f", b - a }')
  jq -r '.events[] | "  | \(.step): \(.message)"' "$TMP/mv.json" 2>/dev/null | cut -c1-1000 >&2 || true
  [[ $state == "done" ]] || die "round move: move $id ended '${state:-<no answer>}' (step $(jq -r .step "$TMP/mv.json" 2>/dev/null)) after $T_MOVE s"
  local steps s
  steps=$(jq -r '[.events[].step] | unique | join(", ")' "$TMP/mv.json")
  for s in plan 'stop source' 'copy disks' 'start target' 'switch L2' verify commit; do
    jq -e --arg s "$s" '[.events[] | select(.step == $s and (.message | test("ok in")))] | length > 0' "$TMP/mv.json" >/dev/null ||
      die "round move: step '$s' did not end ok (steps: $steps)"
  done
  jq -e --arg mac "$SERVER_MAC" '[.events[] | select(.step == "start target") | .message
      | select(test("started on cloud1 under tcg") and test($mac; "i"))] | length > 0' "$TMP/mv.json" >/dev/null ||
    die "round move: the node did not report web1 started under TCG with MAC $SERVER_MAC"
  curl_cl -b "$TMP/jar" -H 'Accept: application/json' -o "$TMP/overview.json" "https://$GUEST_IP/" || die "round move: GET / failed"
  jq -e '.servers[] | select(.name == "web1") | .location == "cloud1"' "$TMP/overview.json" >/dev/null ||
    die "round move: web1 is not in cloud1 in the overview: $(jq -c .servers "$TMP/overview.json")"
  log "round move: $id done in $T_MOVE s through the images (steps: $steps); web1 runs in cloud1"
  [[ $MOVE_IP_CHECK == 0 ]] || move_check_lan
  return 0
}

# The moved server answers at its IP on the LAN segment: the move's verify step
# (run by the appliance from its LAN address 10.77.0.2) checked TCP 80 and the
# MAC in its ARP table, and a client host on the LAN (namespace NS_LAN, on br1
# with the appliance's LAN NIC only) pings it, reads its page over HTTP (which
# names it) and finds its MAC in its own ARP table. The only way there is the
# appliance image's LCG (lcg0 on its LAN bridge) -> encrypted UDP on the
# management bridge -> the node image's bridge -> the guest's TAP.
move_check_lan() {
  local verify
  verify=$(jq -r '[.events[] | select(.step == "verify") | .message] | join(" | ")' "$TMP/mv.json")
  if [[ $MOVE_IP_CHECK == verify ]]; then
    grep -q "$SERVER_IP answers on TCP \[80\]" <<<"$verify" ||
      die "round move: the move's verify step did not check $SERVER_IP on TCP 80: $verify"
    grep -qi "ARP $SERVER_IP → $SERVER_MAC" <<<"$verify" ||
      die "round move: the move's verify step did not find $SERVER_MAC for $SERVER_IP in the appliance's ARP table: $verify"
  else
    grep -q 'not checked' <<<"$verify" || die "round move: unexpected verify step for a server without an IP: $verify"
  fi
  # The guest boots under nested TCG: wait for its address (ping), then for
  # its web server, which its boot script starts a few commands later.
  local since t_ip=null next_note=0 what=ping
  while :; do
    since=$(awk -v a="$T_MOVE_END" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    if [[ $what == ping ]] && ip netns exec "$NS_LAN" ping -c 1 -W 2 "$SERVER_IP" >/dev/null 2>&1; then
      t_ip=$since
      T_PING=$t_ip
      what=http
      # It answered with its own MAC (nothing else on this LAN has that IP).
      ip -n "$NS_LAN" neigh show "$SERVER_IP" | grep -qi "lladdr $SERVER_MAC" ||
        die "round move: $SERVER_IP answered ping, but the LAN client's ARP table has '$(ip -n "$NS_LAN" neigh show "$SERVER_IP")', not $SERVER_MAC"
      log "round move: $SERVER_IP answers ping on the LAN $t_ip s after the move's end, with MAC $SERVER_MAC in the LAN client's ARP table (through the appliance's LCG and the node's bridge); waiting for its web server"
    fi
    if [[ $what == http ]] && ip netns exec "$NS_LAN" curl -s --max-time 5 -o /dev/null "http://$SERVER_IP/"; then
      break
    fi
    if awk -v s="$since" -v w="$MOVE_IP_WAIT" 'BEGIN { exit !(s > w) }'; then
      IP_TIMED_OUT=$what
      if [[ $what == ping ]]; then
        log "round move: SKIP the moved server's answer at its IP: no ping answer from $SERVER_IP to the LAN client within MOVE_IP_WAIT=$MOVE_IP_WAIT s of the move's end (load average $(cut -d' ' -f1 /proc/loadavg)): its boot under nested TCG is slower than that here (README.md); the node's copy of its console is checked after the node's power-off"
      else
        log "round move: SKIP the HTTP part of the moved server's check: $SERVER_IP answered ping (and ARP) after $t_ip s, but its web server not within MOVE_IP_WAIT=$MOVE_IP_WAIT s of the move's end (load average $(cut -d' ' -f1 /proc/loadavg)): its boot under nested TCG is slower than that here (README.md)"
      fi
      return 0
    fi
    if awk -v s="$since" -v n="$next_note" 'BEGIN { exit !(s >= n) }'; then
      log "round move: waiting for $SERVER_IP ($what) on the LAN after $since s (web1 boots under nested TCG)"
      next_note=$((next_note + 60))
    fi
    sleep 1
  done
  T_ANSWER=$(awk -v a="$T_MOVE_END" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  ip netns exec "$NS_LAN" ping -c 3 -W 5 "$SERVER_IP" >"$TMP/ping.out" 2>&1 ||
    die "round move: $SERVER_IP does not answer ping from the LAN client: $(tail -n 2 "$TMP/ping.out" | tr '\n' ' ')"
  ip netns exec "$NS_LAN" curl -sS --max-time 30 -o "$TMP/web1-page.txt" "http://$SERVER_IP/" ||
    die "round move: GET http://$SERVER_IP/ from the LAN client failed"
  local want
  for want in hostname=web1 "mac=$SERVER_MAC" "ip=$SERVER_IP" "client=$LAN_CLIENT_IP"; do
    grep -qx "$want" "$TMP/web1-page.txt" || die "round move: the page at http://$SERVER_IP/ has no line '$want': $(tr '\n' ' ' <"$TMP/web1-page.txt")"
  done
  ip -n "$NS_LAN" neigh show "$SERVER_IP" | grep -qi "lladdr $SERVER_MAC" ||
    die "round move: the LAN client's ARP table has $(ip -n "$NS_LAN" neigh show "$SERVER_IP") for $SERVER_IP, not $SERVER_MAC"
  IP_CHECKED=true
  log "round move: web1 answers at $SERVER_IP on the LAN through the images (ping after $t_ip s, HTTP after $T_ANSWER s from the move's end); verify step: '${verify#verify: started | }'; from the LAN client: ping $(grep -o 'rtt[^,]*' "$TMP/ping.out" | head -n 1), HTTP page names $(head -n 1 "$TMP/web1-page.txt"), ARP $SERVER_IP → $SERVER_MAC"
}

# Reads files of the node's powered-off disk: the whole disk is searched for
# the marker, then its data partition (journal replayed by e2fsck on the copy).
move_check_node() {
  local start size n
  qemu-img convert -O raw "$TMP/node.qcow2" "$TMP/node.raw"
  n=$(grep -ca "$MARK" "$TMP/node.raw" || true)
  ((n == 0)) || die "round move: the node's disk holds the source's plaintext marker ($n places)"
  start=$(sfdisk -J "$TMP/node.raw" | jq '.partitiontable.partitions[3].start')
  size=$(sfdisk -J "$TMP/node.raw" | jq '.partitiontable.partitions[3].size')
  dd if="$TMP/node.raw" of="$TMP/node-data.part" bs=1M iflag=skip_bytes,count_bytes skip=$((start * 512)) count=$((size * 512)) conv=sparse status=none
  rm -f "$TMP/node.raw"
  e2fsck -fy "$TMP/node-data.part" >/dev/null 2>&1 || true
  debugfs -R "ls -l /isthmus-node/disks" "$TMP/node-data.part" 2>/dev/null >"$TMP/node-disks.ls"
  local img
  img=$(awk '$NF ~ /^m-[0-9]+-web1-d0\.img$/ { print $NF; exit }' "$TMP/node-disks.ls")
  [[ -n $img ]] || die "round move: no moved disk of web1 on the node: $(tr '\n' ' ' <"$TMP/node-disks.ls" | head -c 400)"
  debugfs -R "dump /isthmus-node/disks/$img $TMP/moved.img" "$TMP/node-data.part" >/dev/null 2>&1
  qemu-img info --output=json "$TMP/moved.img" >"$TMP/moved.info" 2>&1 || die "round move: qemu-img info on the moved disk: $(head -c 300 "$TMP/moved.info")"
  jq -e '.encrypted == true' "$TMP/moved.info" >/dev/null ||
    die "round move: the moved disk on the node is not encrypted: $(jq -c '{format, encrypted}' "$TMP/moved.info")"
  rm -f "$TMP/moved.img"
  debugfs -R "cat /isthmus-node/guests.json" "$TMP/node-data.part" 2>/dev/null >"$TMP/node-guests.json"
  grep -qi "$SERVER_MAC" "$TMP/node-guests.json" || die "round move: the node's guest table has no NIC with $SERVER_MAC"
  debugfs -R "cat /log/isthmus-node.log" "$TMP/node-data.part" 2>/dev/null >"$TMP/node-move.log"
  grep 'guest started' "$TMP/node-move.log" | grep -q web1 || die "round move: the node's log has no start of web1's QEMU"
  debugfs -R "cat /isthmus-node/guests/web1/serial.log" "$TMP/node-data.part" 2>/dev/null | tr -d '\r' >"$TMP/web1-serial.log"
  rm -f "$TMP/node-data.part"
  # The node's shutdown (rcK) found web1's QEMU still running inside the VM.
  grep -qa 'isthmus: stopping the guests still running: [0-9]' "$TMP/serial-node.log" ||
    die "round move: no guest QEMU was running in the node VM at its power-off (its console has no 'stopping the guests')"
  # Its kernel's first lines come after SeaBIOS, GRUB and the decompressor,
  # all under nested TCG: within GUEST_WAIT on a lightly loaded host, not
  # always under heavy load (then noted, not failed).
  # Up in the node but never a ping on the LAN: the path LAN - LCG - tunnel -
  # node bridge - guest is broken (its address is set before READY).
  if [[ $IP_TIMED_OUT == ping ]] && grep -q '^ISTHMUS-READY' "$TMP/web1-serial.log"; then
    die "round move: web1 came up in the node (ISTHMUS-READY on its console) but never answered ping at $SERVER_IP on the LAN within $MOVE_IP_WAIT s: the path LAN - LCG - tunnel - node bridge - guest is broken"
  fi
  if [[ $IP_CHECKED == true ]]; then
    # It answered at its IP: its console (kernel `quiet`) has its READY line.
    grep -q '^ISTHMUS-READY' "$TMP/web1-serial.log" ||
      die "round move: web1 answered at its IP but its serial console on the node has no ISTHMUS-READY: $(tail -n 3 "$TMP/web1-serial.log" | tr '\n' ' ')"
    GUEST_KERNEL=true
    log "round move: web1's serial console on the node (nested TCG): $(grep -m1 -o '^ISTHMUS-FACTS.*' "$TMP/web1-serial.log" | cut -c1-160); ISTHMUS-READY"
  elif grep -q '^ISTHMUS-READY' "$TMP/web1-serial.log"; then
    GUEST_KERNEL=true
    log "round move: web1's serial console on the node (nested TCG) has ISTHMUS-READY: it came up after the smoke's wait"
  elif grep -q 'Linux version' "$TMP/web1-serial.log"; then
    GUEST_KERNEL=true
    log "round move: web1's serial console on the node (nested TCG): $(grep -m1 -o 'Linux version [^ ]*' "$TMP/web1-serial.log"); $(wc -l <"$TMP/web1-serial.log") lines, last: $(grep -v '^$' "$TMP/web1-serial.log" | tail -n 1 | cut -c1-120)"
  else
    log "round move: note: web1's serial console on the node shows no kernel yet ($(wc -c <"$TMP/web1-serial.log") bytes after ${GUEST_WAIT:-150} s of nested TCG; load average $(cut -d' ' -f1 /proc/loadavg))"
  fi
  log "round move: the node's disk has no byte of the marker; $img is LUKS-encrypted $(jq -r .format "$TMP/moved.info"); web1's QEMU started in the node VM with NIC $SERVER_MAC"
}
