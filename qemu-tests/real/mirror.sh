#!/usr/bin/env bash
# The real-components mirror for the QEMU rehearsal: builds the components (build.sh,
# cached), a Debian trixie base layer for the images that need a shell or netfilter tools
# (mmdebstrap, cached by its recipe), then the mirror and lock (make-mirror.py) in
# target/real-mirror/<key>/, renamed into place when complete. Prints that directory last;
# kubestick then runs with `--lock DIR/artifacts.lock --mirror DIR/mirror`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
root=${REAL_MIRROR_DIR:-$repo/target/real-mirror}
log() { printf '[real-mirror] %s\n' "$*" >&2; }

built=$("$here/build.sh" | tail -n 1)
mkdir -p "$root"

# The images' shared userland: iptables and nftables for kube-proxy and flanneld, a shell
# and cp for flannel's init containers. Debian's own, like the nodes' root filesystem.
base_recipe="mmdebstrap --variant=essential --include=iptables,nftables,conntrack trixie (no docs, man pages or locales)"
base=$root/base-$(printf '%s' "$base_recipe" | sha256sum | cut -c1-16).tar
if [[ ! -f $base ]]; then
  log "building the images' Debian base layer: $base_recipe"
  mmdebstrap --quiet --variant=essential --include=iptables,nftables,conntrack \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    trixie "$base.tmp.tar" "deb ${DEBIAN_MIRROR:-http://deb.debian.org/debian} trixie main"
  mv "$base.tmp.tar" "$base"
fi

key=$(cat "$built/SHA256SUMS" "$base" "$here/make-mirror.py" "$repo/artifacts.lock" | sha256sum | cut -c1-16)
final=$root/$key
if [[ ! -d $final ]]; then
  tmp=$(mktemp -d "$root/.tmp-$key.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  log "writing the mirror and lock of $built"
  python3 "$here/make-mirror.py" "$repo" "$built/bin" "$base" "$tmp"
  mv -T "$tmp" "$final"
fi
log "up to date: $final"
echo "$final"
