#!/usr/bin/env bash
# Install the host tools `kubestick build` and `kubestick vm` use, on Debian 12 or 13
# (as root). Idempotent: does nothing, and touches no network, when all are present.
#
#   mmdebstrap          builds the Debian trixie base root filesystem
#   e2fsprogs >= 1.47.2 mke2fs -d from a tarball (rootless ext4; bookworm-backports on Debian 12),
#                       with libarchive13, which mke2fs loads to read tarballs
#   qemu-system-x86, ovmf, qemu-utils   the QEMU rehearsal
#   mtools, dosfstools, fdisk, zstd, curl   checks and benchmarks
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
log() { printf '==> %s\n' "$*" >&2; }

pkg_installed() { [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]; }
e2fs_ok() {
  local v
  v=$(dpkg-query -W -f='${Version}' e2fsprogs 2>/dev/null) || return 1
  dpkg --compare-versions "$v" ge 1.47.2
}

packages=(mmdebstrap libarchive13 qemu-system-x86 ovmf qemu-utils mtools dosfstools fdisk zstd curl ca-certificates)
missing=()
for p in "${packages[@]}"; do pkg_installed "$p" || missing+=("$p"); done

if ((${#missing[@]})) || ! e2fs_ok; then
  [[ $(id -u) -eq 0 ]] || { echo "host-deps: installing ${missing[*]} e2fsprogs needs root" >&2; exit 1; }
  updated=false
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get update -q && updated=true
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  if ! e2fs_ok; then
    # shellcheck source=/dev/null
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    if [[ $codename == bookworm ]]; then
      mirror=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -oE 'https?://[^ ]+/debian/?' | grep -v security | head -n1 || true)
      mirror=${mirror:-http://deb.debian.org/debian}
      log "e2fsprogs >= 1.47.2 from bookworm-backports ($mirror)"
      echo "deb ${mirror%/} bookworm-backports main" >/etc/apt/sources.list.d/kubestick-bookworm-backports.list
      apt-get update -q
      apt-get install -y -q --no-install-recommends -t bookworm-backports e2fsprogs
    else
      $updated || apt-get update -q
      apt-get install -y -q --no-install-recommends e2fsprogs
    fi
  fi
fi
e2fs_ok || { echo "host-deps: e2fsprogs >= 1.47.2 is required (mke2fs -d from a tarball)" >&2; exit 1; }
log "host tools ready: $(mke2fs -V 2>&1 | head -n1), $(mmdebstrap --version), $(qemu-system-x86_64 --version | head -n1)"
