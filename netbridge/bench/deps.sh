#!/usr/bin/env bash
# Host packages for `make bench-netbridge` (the peers the benchmark compares
# against). Never part of `make test`.
set -euo pipefail
need=()
for p in iperf3 openvpn fastd; do
  command -v "$p" >/dev/null 2>&1 || need+=("$p")
done
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if ((${#need[@]})); then
  echo "bench deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  # openvpn/fastd ship units we do not want started on the host.
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
