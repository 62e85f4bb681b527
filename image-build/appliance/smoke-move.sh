# shellcheck shell=bash disable=SC2034 # ROUND, T_MOVE, GUEST_KERNEL are read by smoke.sh
# The skeleton's move through the images, sourced by smoke.sh (uses its TMP,
# boot/login/curl_cl/power_button helpers, GUEST_IP and NS_* names).
#
# The source server is the test server's disk (image-build/test-server) as a
# raw image on the appliance's data partition (/data/sources/web1.img), put
# there offline with debugfs: the appliance image runs no guests (no QEMU, only
# qemu-img to read the disk), so the server is described to it as a stopped
# data-center server whose disk it can read. The smoke's copy of that disk
# carries a random plaintext marker file (/srv/marker.txt) and boots without
# `quiet`, so that its kernel's first lines show on its serial console.
#
# move_prepare: before the appliance's enrolment boot, writes the disk.
# move_run:     with the appliance up and cloud1 enrolled: POST /api/servers,
#               POST /api/moves over HTTPS, polls GET /moves/{id} until the
#               move ends; asserts it ends `done` with the steps that ran, the
#               node's own report of the start (accelerator, NIC model + MAC)
#               and the server's location cloud1 in the overview.
# move_check_node: after the node's power-off: no byte of the marker anywhere
#               on the node's disk, the moved disk is LUKS-encrypted qcow2,
#               the node's log has the guest's QEMU start (pid), its guest
#               table the server's MAC, its shutdown stopped the guest's
#               QEMU still running in it, and the guest's serial console (hv's
#               serial.log on the node) shows its kernel booting (noted, not
#               failed, when nested TCG under load has not got there yet).

SERVER_MAC=52:54:00:12:34:56
MOVE_TIMEOUT=${MOVE_TIMEOUT:-600}
T_MOVE=null
GUEST_KERNEL=false

move_prepare() {
  local ts start
  ts=$(bash "$HERE/../test-server/build.sh" | tail -n 1) || die "round move: cannot build the test server image"
  jq -e --arg m "$SERVER_MAC" '.mac == $m' "$ts/manifest.json" >/dev/null ||
    die "round move: the test server image has another MAC than $SERVER_MAC"
  qemu-img convert -O raw "$ts/disk.qcow2" "$TMP/web1.img"
  # The marker (random per run) and a kernel command line without `quiet`, on
  # the server's root partition (partition 1), edited offline.
  MARK="ISTHMUS-SMOKE-PLAINTEXT-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
  printf '%s\n' "$MARK" >"$TMP/marker.txt"
  start=$(sfdisk -J "$TMP/web1.img" | jq '.partitiontable.partitions[0].start')
  local size
  size=$(sfdisk -J "$TMP/web1.img" | jq '.partitiontable.partitions[0].size')
  dd if="$TMP/web1.img" of="$TMP/web1.part" bs=1M iflag=skip_bytes,count_bytes skip=$((start * 512)) count=$((size * 512)) conv=sparse status=none
  debugfs -R "cat /boot/grub/grub.cfg" "$TMP/web1.part" 2>/dev/null | sed 's/ quiet / /' >"$TMP/grub.cfg"
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
  jq -n --arg mac "$SERVER_MAC" '{
    name: "web1",
    profile: {
      cpus: 1, memory_mib: 256,
      disks: [{bus: "ide", unit: 0, boot: true}],
      nics: [{model: "e1000", mac: $mac, pci_slot: "03.0"}],
      smbios: {serial: "WEB1-SN-0001", manufacturer: "Isthmus Lab"}
    },
    source: {kind: "local-qemu", disks: ["/data/sources/web1.img"], taps: ["tap-web1"]}
  }' >"$TMP/web1.json"
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
  T_MOVE=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
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
  if grep -q 'Linux version' "$TMP/web1-serial.log"; then
    GUEST_KERNEL=true
    log "round move: web1's serial console on the node (nested TCG): $(grep -m1 -o 'Linux version [^ ]*' "$TMP/web1-serial.log"); $(wc -l <"$TMP/web1-serial.log") lines, last: $(grep -v '^$' "$TMP/web1-serial.log" | tail -n 1 | cut -c1-120)"
  else
    log "round move: note: web1's serial console on the node shows no kernel yet ($(wc -c <"$TMP/web1-serial.log") bytes after ${GUEST_WAIT:-150} s of nested TCG; load average $(cut -d' ' -f1 /proc/loadavg))"
  fi
  log "round move: the node's disk has no byte of the marker; $img is LUKS-encrypted $(jq -r .format "$TMP/moved.info"); web1's QEMU started in the node VM with NIC $SERVER_MAC"
}
