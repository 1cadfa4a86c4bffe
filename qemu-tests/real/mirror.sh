#!/usr/bin/env bash
# The real-components mirror for the QEMU rehearsal: builds the components (build.sh,
# cached), a Debian trixie base layer for the images that need a shell or netfilter tools
# (mmdebstrap, cached by its recipe), then the mirror and lock (make-mirror.py) in
# target/real-mirror/<key>/, renamed into place when complete. Prints that directory last;
# kubestick then runs with `--lock DIR/artifacts.lock --mirror DIR/mirror`.
#
# REAL_RELEASES="1.36.4 1.35.8": the Kubernetes releases the mirror and lock carry. The
# default build's release (build.sh with no argument, 1.36.4) is always carried; any other
# is built by `build.sh RELEASE` (cached like the rest) and added by make-mirror-releases.py,
# its files and images laid out as the default release's. Unset (or naming only the default
# release), the mirror, its key and its lock are what make-mirror.py alone writes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
root=${REAL_MIRROR_DIR:-$repo/target/real-mirror}
log() { printf '[real-mirror] %s\n' "$*" >&2; }

built=$("$here/build.sh" | tail -n 1)
default_release=$(sed -n 's/^kubeadm\tv\([^\t]*\)\t.*/\1/p' "$built/VERSIONS")
extra=() # RELEASE=TREE of every further release
for r in ${REAL_RELEASES:-}; do
  [[ $r != "$default_release" && " ${extra[*]} " != *" $r="* ]] || continue
  tree=$("$here/build.sh" "$r" | tail -n 1)
  extra+=("$r=$tree")
done
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

key_inputs() {
  cat "$built/SHA256SUMS" "$base" "$here/make-mirror.py" "$repo/artifacts.lock"
  ((${#extra[@]} == 0)) || {
    cat "$here/make-mirror-releases.py"
    for e in "${extra[@]}"; do
      printf '%s\n' "${e%%=*}"
      cat "${e#*=}/SHA256SUMS"
    done
  }
}
key=$(key_inputs | sha256sum | cut -c1-16)
final=$root/$key
if [[ ! -d $final ]]; then
  tmp=$(mktemp -d "$root/.tmp-$key.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  if ((${#extra[@]} == 0)); then
    log "writing the mirror and lock of $built"
    python3 "$here/make-mirror.py" "$repo" "$built/bin" "$base" "$tmp"
  else
    log "writing the mirror and lock of $built and ${extra[*]}"
    python3 "$here/make-mirror-releases.py" "$repo" "$base" "$tmp" "$built" "${extra[@]}"
  fi
  mv -T "$tmp" "$final"
fi
log "up to date: $final"
echo "$final"
