#!/usr/bin/env bash
# Builds, for linux/amd64, the storage components of the QEMU rehearsal (issue 24) that can
# be built here from the Go module proxy and Debian alone: the CSI sidecars csi-attacher
# v4.12.0 and the csi-addons k8s-sidecar v0.14.0, and the ceph image's root filesystem
# from Debian sid's ceph 20.2.4 packages. Plain binaries and tarballs only.
#
# Not built, and why (storage/README.md): rook v1.20.6 (its nested module
# github.com/rook/rook/pkg/apis is refused by the proxy), cephcsi v3.17.0, csi-provisioner
# v6.2.0, csi-node-driver-registrar v2.17.0, csi-resizer v2.1.0, csi-snapshotter v8.5.0 and
# ceph-csi-operator v1.0.4 (refused by the proxy, or served without a part they need).
#
# Output: target/real-storage/<key>/ where <key> hashes this script (pins and recipe), the
# wrapper modules, the Go version and the mmdebstrap version. The tree is built in a
# temporary directory next to it and renamed into place when complete. If <key>/ exists
# the script only prints its path. The last line of stdout is always the output directory.
#
# Environment:
#   REAL_STORAGE_DIR      output root (default: <repo>/target/real-storage)
#   DEBIAN_MIRROR         Debian mirror (default: http://deb.debian.org/debian)
#   GOCACHE, GOMODCACHE   honoured as usual
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
wrappers=$here/storage
out_root=${REAL_STORAGE_DIR:-$repo/target/real-storage}
debian_mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { printf '[real-storage] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source-path=SCRIPTDIR source=build-lib.sh
. "$here/build-lib.sh"

command -v go >/dev/null || die "go not found"
command -v mmdebstrap >/dev/null || die "mmdebstrap not found (apt-get install -y mmdebstrap)"

export GOTOOLCHAIN=local GOOS=linux GOARCH=amd64 CGO_ENABLED=0
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
export GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}
# Fixed time for every file written (rook v1.20.6's release time); mmdebstrap honours it too.
export SOURCE_DATE_EPOCH=1787259934

# ---- the ceph root filesystem recipe --------------------------------------------------
ceph_version=20.2.4+ds-2
ceph_pkgs=(ceph-mon ceph-mgr ceph-osd ceph-volume ceph-common ceph-base ceph-mgr-rook ceph-mgr-modules-core)
# What rook's pods run besides the ceph daemons (pkg/operator/ceph/cluster/osd/spec.go,
# pkg/util/sys, pkg/daemon/ceph/osd): lvm2, cryptsetup, dmsetup, sgdisk (gdisk), lsblk and
# wipefs (util-linux), umount (mount), udevadm (udev), fuser (psmisc), stdbuf (coreutils),
# kill (procps), awk (mawk), python3 (ceph-volume; the activate script's find_device),
# bash; ip (iproute2) is what rook's own Dockerfile adds for Multus.
tool_pkgs=(lvm2 cryptsetup-bin dmsetup gdisk util-linux mount udev psmisc procps mawk python3 iproute2)
ceph_uid=167  # upstream ceph images' and rook's CephUserID; Debian's ceph user is 64045
rook_uid=2016 # rook's Dockerfile: useradd rook -u 2016; USER 2016
rootfs_recipe="mmdebstrap --variant=essential --aptopt=APT::Install-Recommends=false --aptopt=Acquire::Check-Valid-Until=false sid (deb $debian_mirror sid main); ${ceph_pkgs[*]/%/=$ceph_version} ${tool_pkgs[*]}; no docs, man pages or locales; ceph uid/gid $ceph_uid, rook uid/gid $rook_uid"

go_version=$(go env GOVERSION)
mmdebstrap_version=$(mmdebstrap --version | awk '{print $2}')

# ---- cache key -------------------------------------------------------------------------
key_inputs() {
	printf 'go=%s mmdebstrap=%s goos=%s goarch=%s\n' "$go_version" "$mmdebstrap_version" "$GOOS" "$GOARCH"
	sha256sum "$here/build-storage.sh" "$here/build-lib.sh"
	wrapper_sums "$wrappers"
}
exit_if_built "$(key_inputs | sha256sum | cut -c1-16)"

start_tree

# modorigin DIR MODULE: origin commit of MODULE as selected by the wrapper module in DIR
modorigin() {
	local info
	info=$(cd "$1" && go mod download -json "$2" | sed -n 's/^[[:space:]]*"Info": "\(.*\)",$/\1/p')
	sed -n 's/.*"Origin":{[^}]*"Hash":"\([0-9a-f]*\)".*/\1/p' "$info"
}

# ---- CSI sidecars served as modules --------------------------------------------------------
att_ver=$(modver "$wrappers/external-attacher" github.com/kubernetes-csi/external-attacher/v4)
# kubernetes-csi release-tools/build.make: CGO_ENABLED=0, -X main.version=<rev>, -extldflags -static.
gobuild_static "$wrappers/external-attacher" "" "-s -w -X main.version=$att_ver -extldflags -static" \
	"$bin/csi-attacher" github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher
record csi-attacher "$att_ver" "github.com/kubernetes-csi/external-attacher/v4@$att_ver/cmd/csi-attacher"

addons_ver=$(modver "$wrappers/csi-addons" github.com/csi-addons/kubernetes-csi-addons)
addons_commit=$(modorigin "$wrappers/csi-addons" github.com/csi-addons/kubernetes-csi-addons)
addons_pkg=github.com/csi-addons/kubernetes-csi-addons
# Upstream Makefile: go build -ldflags '-X .../internal/version.{GitCommit,Version}' sidecar/main.go,
# CGO_ENABLED=0 (build/Containerfile.sidecar); the image's entrypoint is /usr/sbin/csi-addons-sidecar.
gobuild_static "$wrappers/csi-addons" "" \
	"-s -w -X $addons_pkg/internal/version.GitCommit=$addons_commit -X $addons_pkg/internal/version.Version=$addons_ver" \
	"$bin/csi-addons-sidecar" "$addons_pkg/sidecar"
record csi-addons-sidecar "$addons_ver" "$addons_pkg@$addons_ver/sidecar (k8s-sidecar image)"

# ---- the ceph root filesystem ---------------------------------------------------------------
# Debian's ceph user is uid/gid 64045; rook runs the crash collector as the numeric uid 167
# (CephUserID) and chowns data directories to ceph:ceph by name, and upstream's ceph images
# use 167: so ceph is renumbered to 167 (see storage/README.md).
rootfs=$tmp/ceph-rootfs.tar
# The hook also empties /etc/hostname and drops /etc/resolv.conf (both copied from the
# host) and nvme-cli's /etc/nvme/host{id,nqn} (random per install: an image must not carry
# one NVMe host identity to every node, and they made the tarball differ between builds).
# shellcheck disable=SC2016 # $1 is mmdebstrap's hook argument, expanded by its shell
remap_hook='set -e
[ "$(chroot "$1" id -u ceph)" = 64045 ]
for id in '"$ceph_uid $rook_uid"'; do
	if chroot "$1" getent passwd "$id" || chroot "$1" getent group "$id"; then echo "uid/gid $id taken" >&2; exit 1; fi
done
chroot "$1" groupmod -g '"$ceph_uid"' ceph
chroot "$1" usermod -u '"$ceph_uid"' -g '"$ceph_uid"' ceph
find "$1" -xdev -uid 64045 -exec chown -h '"$ceph_uid"' {} +
find "$1" -xdev -gid 64045 -exec chgrp -h '"$ceph_uid"' {} +
chroot "$1" groupadd -g '"$rook_uid"' rook
chroot "$1" useradd -M -N -u '"$rook_uid"' -g '"$rook_uid"' -d /var/lib/rook -s /usr/sbin/nologin rook
rm -f "$1"/etc/passwd- "$1"/etc/group- "$1"/etc/shadow- "$1"/etc/gshadow-
: >"$1/etc/hostname"
rm -f "$1/etc/resolv.conf"
rm -f "$1/etc/nvme/hostid" "$1/etc/nvme/hostnqn"
rm -f "$1"/var/log/*.log "$1"/var/log/apt/* "$1"/var/cache/ldconfig/aux-cache
chroot "$1" dpkg-query -W -f "\${Package}\t\${Version}\n" >"$ROOTFS_PKGLIST"'
export ROOTFS_PKGLIST=$tmp/ceph-rootfs.packages.unsorted
# sid's Release carries a Valid-Until a week ahead; the mirror reached here can be older
# than that, so its expiry is not checked (its signature still is).
include=$(IFS=,; echo "${ceph_pkgs[*]/%/=$ceph_version},${tool_pkgs[*]}")
log "mmdebstrap: ceph root filesystem (sid, ceph $ceph_version)"
nice -n 19 mmdebstrap --quiet --variant=essential --include="$include" \
	--aptopt='APT::Install-Recommends "false"' --aptopt='Acquire::Check-Valid-Until "false"' \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--customize-hook="$remap_hook" \
	sid "$rootfs" "deb $debian_mirror sid main"
LC_ALL=C sort "$ROOTFS_PKGLIST" >"$tmp/ceph-rootfs.packages"
rm -f "$ROOTFS_PKGLIST"

# Checks on the tarball: what rook execs is there, ceph is 167, nothing left owned by 64045.
listing=$(tar -tvf "$rootfs" --numeric-owner)
for p in usr/bin/ceph usr/bin/ceph-mon usr/bin/ceph-mgr usr/bin/ceph-osd usr/bin/ceph-bluestore-tool \
	usr/sbin/ceph-volume usr/bin/ceph-crash usr/bin/ceph-authtool usr/bin/rbd usr/bin/rados \
	usr/sbin/lvm usr/sbin/cryptsetup usr/sbin/dmsetup usr/sbin/sgdisk usr/bin/lsblk usr/sbin/wipefs \
	usr/bin/umount usr/bin/udevadm usr/bin/fuser usr/bin/stdbuf usr/bin/python3 usr/bin/bash \
	usr/sbin/ip usr/bin/awk; do
	grep -qE " \./$p( |$)" <<<"$listing" || die "ceph root filesystem lacks /$p"
done
grep -q '^ceph:x:167:167:' < <(tar -xOf "$rootfs" ./etc/passwd) || die "ceph is not uid/gid 167"
if awk '{split($2, o, "/"); if (o[1] == 64045 || o[2] == 64045) bad = 1} END {exit !bad}' <<<"$listing"; then
	die "files owned by 64045 remain"
fi
grep -q "^ceph-osd	$ceph_version$" "$tmp/ceph-rootfs.packages" || die "ceph-osd is not $ceph_version"
rootfs_unpacked=$(awk '{s += $3} END {print s}' <<<"$listing")
record ceph-rootfs "$ceph_version" "Debian sid via mmdebstrap (ceph-rootfs.packages)"

# ---- checks and metadata --------------------------------------------------------------------
check_static

{
	printf 'key\t%s\n' "$key"
	printf 'go\t%s\nmmdebstrap\t%s\n' "$go_version" "$mmdebstrap_version"
	printf 'goos/goarch\t%s/%s (CGO_ENABLED=0, -trimpath, -buildid=)\n' "$GOOS" "$GOARCH"
	printf 'SOURCE_DATE_EPOCH\t%s\n' "$SOURCE_DATE_EPOCH"
	printf 'ceph-rootfs recipe\t%s\n' "$rootfs_recipe"
	printf 'ceph-rootfs unpacked bytes\t%s\n' "$rootfs_unpacked"
	printf 'ceph-rootfs packages\t%s\n' "$(wc -l <"$tmp/ceph-rootfs.packages")"
	printf 'not built\trook, cephcsi, csi-provisioner, csi-node-driver-registrar, csi-resizer, csi-snapshotter, ceph-csi-operator (storage/README.md)\n'
} >"$tmp/BUILDINFO"
find "$tmp" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$tmp" && find bin -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum && sha256sum ceph-rootfs.tar) >"$tmp/SHA256SUMS"
touch -d "@$SOURCE_DATE_EPOCH" "$tmp/SHA256SUMS" "$tmp"

finish_tree
