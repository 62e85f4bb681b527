# Isthmus test-server helpers, sourced by rcS, rcK and the facts script.
# shellcheck disable=SC2034 # NET_* are used by the scripts that source this
# shellcheck shell=sh

# Lower-cased MAC and ADDR from /etc/isthmus/net.conf into NET_MAC / NET_ADDR / NET_GW.
load_net_conf() {
  MAC='' ADDR='' GW=''
  # shellcheck disable=SC1091
  . /etc/isthmus/net.conf
  NET_MAC=$(echo "$MAC" | tr 'A-F' 'a-f')
  NET_ADDR=$ADDR
  NET_GW=$GW
}

# Name of the interface whose MAC is NET_MAC (any name), or nothing.
find_iface() {
  for d in /sys/class/net/*; do
    [ -e "$d/address" ] || continue
    if [ "$(cat "$d/address")" = "$NET_MAC" ]; then
      echo "${d##*/}"
      return 0
    fi
  done
  return 1
}

# Sets ROOT_PART (e.g. sda1) and ROOT_DISK (e.g. sda) from the device of /.
find_root() {
  ROOT_PART='' ROOT_DISK=''
  _dev=$(stat -c %d /)
  _maj=$(( (_dev >> 8) & 0xfff ))
  _min=$(( (_dev & 0xff) | ((_dev >> 12) & 0xfff00) ))
  _sys=$(readlink -f "/sys/dev/block/$_maj:$_min") || return 1
  [ -d "$_sys" ] || return 1
  ROOT_PART=${_sys##*/}
  if [ -e "$_sys/partition" ]; then
    _p=${_sys%/*}
    ROOT_DISK=${_p##*/}
  else
    ROOT_DISK=$ROOT_PART
  fi
}

# The facts, one key=value a line, in the documented order.
print_facts() {
  load_net_conf
  _if=$(find_iface) || _if=
  _mac='' _ip=''
  if [ -n "$_if" ]; then
    _mac=$(cat "/sys/class/net/$_if/address")
    _ip=$(ip -4 -o addr show dev "$_if" 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }')
  fi
  find_root || true
  _serial=$(cat /sys/class/dmi/id/product_serial 2>/dev/null) || _serial=
  echo "hostname=$(hostname)"
  echo "mac=$_mac"
  echo "ip=$_ip"
  echo "iface=$_if"
  echo "root_disk=$ROOT_DISK"
  echo "root_dev=${ROOT_PART:+/dev/$ROOT_PART}"
  echo "serial=$_serial"
}
