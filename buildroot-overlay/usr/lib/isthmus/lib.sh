# shellcheck shell=sh
# Shared shell functions of the Isthmus product images (busybox sh).

RUN=/run/isthmus
SEED=$RUN/seed

# A message for the operator: serial console, VGA console and the system log.
say() {
  for t in /dev/ttyS0 /dev/tty1; do
    [ -c "$t" ] && printf '%s\n' "$*" >"$t" 2>/dev/null
  done
  logger -t isthmus "$*" 2>/dev/null
  return 0
}

valid_ipv4() {
  echo "$1" | grep -Eq '^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$'
}
valid_cidr() {
  a=${1%/*}
  p=${1#*/}
  [ "$a" != "$1" ] && valid_ipv4 "$a" && echo "$p" | grep -Eq '^([89]|[12][0-9]|3[0-2])$'
}
valid_hostname() {
  echo "$1" | grep -Eq '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'
}

# key=value from a file (last wins), no shell evaluation of the value.
conf_get() { # file key
  [ -f "$1" ] || return 1
  v=$(sed -n "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*//p" "$1" | tail -n 1 | tr -d '\r"')
  [ -n "$v" ] && echo "$v"
}

# isthmus.KEY=VALUE from the kernel command line (network settings only: never secrets).
cmdline_get() {
  # shellcheck disable=SC2013 # words of the command line
  for a in $(cat /proc/cmdline); do
    case "$a" in "isthmus.$1="*) echo "${a#*=}"; return 0 ;; esac
  done
  return 1
}

# Property from the OVF environment (DSP0243 section 11: ovf-env.xml, <PropertySection>
# <Property oe:key="..." oe:value="..."/>), as VMware's ISO transport delivers it.
ovf_get() {
  f=$SEED/ovf-env.xml
  [ -f "$f" ] || return 1
  v=$(tr '\n' ' ' <"$f" | grep -o "<[A-Za-z:]*Property [^>]*key=\"$1\"[^>]*>" | head -n 1 |
    sed -n 's/.*value="\([^"]*\)".*/\1/p')
  [ -n "$v" ] && echo "$v"
}

# A setting from, in this order: kernel command line, OVF environment, seed file.
setting() {
  cmdline_get "$1" || ovf_get "isthmus.$1" || conf_get "$SEED/isthmus.conf" "$1"
}

# Log rotation (busybox syslogd here has no -s/-b): every *.log and messages
# in /data/log over 1 MiB becomes .1 (.1 -> .2 ... up to .5). Daemons append
# with O_APPEND, so they keep writing to the new file after a truncate.
rotate_logs() {
  for f in /data/log/*.log /data/log/messages; do
    [ -f "$f" ] || continue
    [ "$(stat -c %s "$f")" -gt 1048576 ] || continue
    for i in 4 3 2 1; do [ -f "$f.$i" ] && mv "$f.$i" "$f.$((i + 1))"; done
    cp "$f" "$f.1" && : >"$f"
  done
}

# Copies the seed medium's files (ovf-env.xml, isthmus.conf, token) to $SEED
# (tmpfs, 0700). Any block device other than the boot disk with an iso9660 or
# vfat filesystem is looked at: an OVF environment CD, a cloud-init style
# "cidata" disk, or an ISTHMUS-SEED disk.
load_seed() { # boot-disk-name
  mkdir -p "$SEED" "$RUN/mnt"
  chmod 700 "$RUN" "$SEED"
  for s in /sys/class/block/*; do
    d=${s##*/}
    case "$d" in loop*|ram*|"$1"*) continue ;; esac
    [ -b "/dev/$d" ] || mknod "/dev/$d" b "$(cut -d: -f1 "$s/dev")" "$(cut -d: -f2 "$s/dev")" 2>/dev/null
    for t in iso9660 vfat; do
      mount -t "$t" -o ro "/dev/$d" "$RUN/mnt" 2>/dev/null || continue
      found=
      for f in ovf-env.xml isthmus.conf token; do
        if [ -f "$RUN/mnt/$f" ]; then
          cp "$RUN/mnt/$f" "$SEED/$f"
          chmod 600 "$SEED/$f"
          found="$found $f"
        fi
      done
      umount "$RUN/mnt"
      [ -n "$found" ] && say "isthmus: seed on /dev/$d ($t):$found"
      break
    done
  done
}

# An update medium (any non-boot disk/CD with isthmus-update.img, vfat or
# iso9660): `isthmus update` verifies and writes it to the inactive slot,
# then the appliance reboots into it once. Skipped when it is the running
# version; refused when bad (signature, digest) or when it failed before.
apply_update_medium() { # boot-disk-name
  mkdir -p "$RUN/update"
  for s in /sys/class/block/*; do
    d=${s##*/}
    case "$d" in loop*|ram*|"$1"*) continue ;; esac
    [ -b "/dev/$d" ] || continue
    for t in iso9660 vfat; do
      mount -t "$t" -o ro "/dev/$d" "$RUN/update" 2>/dev/null || continue
      if [ ! -f "$RUN/update/isthmus-update.img" ]; then
        umount "$RUN/update"
        break
      fi
      say "isthmus: update medium on /dev/$d: applying isthmus-update.img"
      : >"$RUN/update.out"
      # Lines go to the consoles as they come (progress of a long write).
      (
        /usr/bin/isthmus update "$RUN/update/isthmus-update.img" 2>"$RUN/update.err"
        echo "$?" >"$RUN/update.rc"
      ) | while IFS= read -r l; do
        say "isthmus: $l"
        echo "$l" >>"$RUN/update.out"
      done
      rc=$(cat "$RUN/update.rc")
      umount "$RUN/update"
      cat "$RUN/update.err" >>/data/log/isthmus-update.log
      if [ "$rc" -ne 0 ]; then
        say "isthmus: UPDATE REFUSED: $(sed -n 's/^Error: //p' "$RUN/update.err" | head -n 1)"
        say "isthmus: the appliance keeps running its current version; remove the update medium"
      elif grep -q 'written to slot' "$RUN/update.out"; then
        say "isthmus: rebooting into the updated slot"
        sync
        umount /data 2>/dev/null
        reboot -f
      fi
      return 0
    done
  done
}
