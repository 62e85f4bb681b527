#!/usr/bin/env bash
# Makes a signed Isthmus update image (format: appliance/src/update/image.rs):
#   ISTHMUS-UPDATE-1\n{"version","root_size","root_sha256","signature"}\n<root.img>
# The Ed25519 signature (OpenSSL, raw message) covers version, size and digest.
# The key stays on the build host; the appliance holds the public half only.
# Usage: sign-update.sh ROOT_IMG VERSION OUT [KEY]
#   KEY default: $ISTHMUS_UPDATE_KEY or /var/cache/isthmus/keys/update-ed25519.pem
set -euo pipefail
root=$1 version=$2 out=$3
key=${4:-${ISTHMUS_UPDATE_KEY:-${ISTHMUS_CACHE:-/var/cache/isthmus}/keys/update-ed25519.pem}}
[[ -f $key ]] || { echo "sign-update: no signing key $key (make images creates it)" >&2; exit 1; }
[[ $version =~ ^[A-Za-z0-9._-]{1,64}$ ]] || { echo "sign-update: bad version '$version'" >&2; exit 1; }
size=$(stat -c %s "$root")
sha=$(sha256sum <"$root" | cut -c1-64)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'isthmus-update-v1\n%s\n%s\n%s\n' "$version" "$size" "$sha" >"$tmp/msg"
openssl pkeyutl -sign -inkey "$key" -rawin -in "$tmp/msg" -out "$tmp/sig"
sig=$(od -An -v -tx1 <"$tmp/sig" | tr -d ' \n')
[[ ${#sig} == 128 ]] || { echo "sign-update: unexpected signature length" >&2; exit 1; }
{
  printf 'ISTHMUS-UPDATE-1\n{"version":"%s","root_size":%s,"root_sha256":"%s","signature":"%s"}\n' \
    "$version" "$size" "$sha" "$sig"
  cat "$root"
} >"$out.tmp"
mv "$out.tmp" "$out"
