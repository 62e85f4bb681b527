#!/usr/bin/env bash
# Host packages for `make bench-move` (the peers the benchmark compares
# against: rsync, qemu-img/qemu-nbd over NBD, iperf3 for the link rate, tc
# for the shaping, ping for the outage). Never part of `make test`.
set -euo pipefail
need=()
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v qemu-nbd >/dev/null 2>&1 || need+=(qemu-utils)
command -v tc >/dev/null 2>&1 || need+=(iproute2)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
if ((${#need[@]})); then
  echo "bench-move deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  # iperf3 and rsync ship daemons we do not want started on the host.
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
