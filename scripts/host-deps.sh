#!/usr/bin/env bash
# Install the host tools `kubestick build` and `kubestick vm` use, on Debian 12 or 13
# (as root). Idempotent: does nothing, and touches no network, when all are present.
#
#   mmdebstrap          builds the Debian trixie base root filesystem
#   e2fsprogs >= 1.47.2 mke2fs -d from a tarball (rootless ext4), with libarchive13,
#                       which mke2fs loads to read tarballs
#   QEMU >= 10          qemu-system-x86, qemu-system-common and qemu-utils, all of one
#                       version (the QEMU rehearsal), with ovmf
#   mtools, dosfstools, fdisk, zstd, curl   checks and benchmarks
#
# On Debian 12 both e2fsprogs and QEMU come from bookworm-backports: bookworm's own
# e2fsprogs 1.47.0 cannot read a tarball, and mixing bookworm's QEMU 7.2 with a newer
# qemu-utils that a machine may already carry makes apt remove one to install the other.
# One QEMU, the newest Debian builds for this release, is what the rehearsal is tested on.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
log() { printf '==> %s\n' "$*" >&2; }

qemu_min=1:10.0
pkg_installed() { [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]; }
pkg_at_least() {
  local v
  pkg_installed "$1" || return 1
  v=$(dpkg-query -W -f='${Version}' "$1" 2>/dev/null) || return 1
  dpkg --compare-versions "$v" ge "$2"
}
e2fs_ok() { pkg_at_least e2fsprogs 1.47.2; }
qemu_pkgs=(qemu-system-x86 qemu-system-common qemu-utils)
qemu_ok() {
  local p v first=
  for p in "${qemu_pkgs[@]}"; do
    pkg_at_least "$p" "$qemu_min" || return 1
    v=$(dpkg-query -W -f='${Version}' "$p")
    [[ -z $first || $v == "$first" ]] || return 1
    first=$v
  done
}

packages=(mmdebstrap libarchive13 ovmf mtools dosfstools fdisk zstd curl ca-certificates)
missing=()
for p in "${packages[@]}"; do pkg_installed "$p" || missing+=("$p"); done

# shellcheck source=/dev/null
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")

if ((${#missing[@]})) || ! e2fs_ok || ! qemu_ok; then
  [[ $(id -u) -eq 0 ]] || {
    echo "host-deps: installing ${missing[*]} e2fsprogs QEMU needs root (run as root once)" >&2
    exit 1
  }
  from=()
  if [[ $codename == bookworm ]]; then
    list=/etc/apt/sources.list.d/kubestick-bookworm-backports.list
    if ! apt-cache policy 2>/dev/null | grep -q 'bookworm-backports/main'; then
      mirror=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -oE 'https?://[^ ]+/debian/?' | grep -v security | head -n1 || true)
      mirror=${mirror:-http://deb.debian.org/debian}
      log "adding bookworm-backports ($mirror) for e2fsprogs >= 1.47.2 and QEMU >= 10"
      echo "deb ${mirror%/} bookworm-backports main" >"$list"
    fi
    from=(-t bookworm-backports)
  fi
  log "apt-get install ${missing[*]} e2fsprogs ${qemu_pkgs[*]}"
  apt-get update -q
  if ((${#missing[@]})); then
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  # -t only raises the backports pin for these packages; the rest of the system stays bookworm.
  apt-get install -y -q --no-install-recommends "${from[@]}" e2fsprogs "${qemu_pkgs[@]}"
fi
e2fs_ok || { echo "host-deps: e2fsprogs >= 1.47.2 is required (mke2fs -d from a tarball)" >&2; exit 1; }
qemu_ok || {
  echo "host-deps: qemu-system-x86, qemu-system-common and qemu-utils >= 10.0, all of one version, are required" >&2
  dpkg-query -W "${qemu_pkgs[@]}" >&2 || true
  exit 1
}
log "host tools ready: $(mke2fs -V 2>&1 | head -n1), $(mmdebstrap --version), $(qemu-system-x86_64 --version | head -n1)"
