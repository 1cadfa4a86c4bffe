#!/usr/bin/env bash
# Builds real Kubernetes node components for the QEMU rehearsal tests from Go
# modules only (the Go module proxy plus Debian's gcc/libseccomp): Kubernetes,
# etcd, CoreDNS, flannel, CNI plugins, crictl, containerd, runc, agnhost, pause.
#
# Every component is pinned by a wrapper module in a subdirectory of this
# directory (its go.mod and go.sum); the versions below are read from them.
#
# Usage: build.sh [RELEASE]
#   no argument (or the release of the kubernetes/ wrapper, 1.36.4): everything above.
#   RELEASE, e.g. 1.35.8 (a previous release kubestick's artifacts.lock pins): only what
#   depends on the Kubernetes release, from the wrapper modules in releases/RELEASE/
#   {kubernetes,etcd,coredns}: the seven Kubernetes binaries, pause (pause.c of that
#   release), and the etcd and CoreDNS versions its kubeadm names (checked, as below).
#   containerd, runc, the CNI plugins, flannel, crictl and agnhost do not depend on the
#   release: mirror.sh takes them from the default build. One script for both, so that a
#   release is built exactly as the default one is. The default build's key leaves
#   releases/ out; a release's key is this script, build-lib.sh and releases/RELEASE/.
#
# Output: target/real-artifacts/<key>/ where <key> hashes this script, the
# wrapper modules, the Go version, gcc and libseccomp. The tree is built in a
# temporary directory next to it and renamed into place when complete, so a
# half-built tree never sits at the final path. If <key>/ already exists the
# script only prints its path (warm run). The last line of stdout is always the
# output directory.
#
# Environment:
#   REAL_ARTIFACTS_DIR  output root (default: <repo>/target/real-artifacts)
#   GOCACHE, GOMODCACHE honoured as usual (set GOCACHE to an empty directory to
#                       measure a cold build)
set -euo pipefail

release=${1:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out_root=${REAL_ARTIFACTS_DIR:-$repo/target/real-artifacts}

log() { printf '[real-build] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source-path=SCRIPTDIR source=build-lib.sh
. "$here/build-lib.sh"

command -v go >/dev/null || die "go not found"
command -v gcc >/dev/null || die "gcc not found (apt-get install -y gcc)"

export GOTOOLCHAIN=local GOOS=linux GOARCH=amd64
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
export GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}

go_version=$(go env GOVERSION)
gcc_version=$(gcc -dumpfullversion 2>/dev/null || gcc -dumpversion)
seccomp_version=$(dpkg-query -W -f='${Version}' libseccomp-dev 2>/dev/null || echo none)

# ---- release ----------------------------------------------------------------
# The wrapper modules of what depends on the Kubernetes release (relative to $here).
k8s_mod=kubernetes etcd_mod=etcd coredns_mod=coredns
if [[ -n $release && ! -d $here/releases/$release ]]; then
	[[ v$release == "$(modver "$here/kubernetes" k8s.io/kubernetes)" ]] ||
		die "no wrapper modules for Kubernetes $release in $here/releases/"
	release= # the default build's own release
fi
if [[ -n $release ]]; then
	k8s_mod=releases/$release/kubernetes etcd_mod=releases/$release/etcd coredns_mod=releases/$release/coredns
fi

# ---- cache key -------------------------------------------------------------
key_inputs() {
	printf 'go=%s gcc=%s libseccomp=%s goos=%s goarch=%s\n' \
		"$go_version" "$gcc_version" "$seccomp_version" "$GOOS" "$GOARCH"
	if [[ -n $release ]]; then
		printf 'release=%s\n' "$release"
		(cd "$here" && sha256sum build.sh build-lib.sh)
		wrapper_sums "$here/releases/$release"
		return
	fi
	# flannel/flanneld/main.go is generated from the pinned module (below): not an input.
	(cd "$here" && find . -type f \( -name build.sh -o -name build-lib.sh -o -name go.mod -o -name go.sum -o -name '*.go' \) \
		-not -path ./flannel/flanneld/main.go -not -path './releases/*' \
		-print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
}
exit_if_built "$(key_inputs | sha256sum | cut -c1-16)"

[[ -n $release || $seccomp_version != none ]] || die "libseccomp-dev missing (apt-get install -y libseccomp-dev pkg-config)"

start_tree
[[ -n $release ]] || mkdir -p "$bin/cni"

# gobuild WRAPPER CGO TAGS LDFLAGS OUT PKG...
gobuild() {
	local wrapper=$1 cgo=$2 tags=$3 ldflags=$4 out=$5
	shift 5
	log "go build ($wrapper): $*"
	(cd "$here/$wrapper" && CGO_ENABLED=$cgo nice -n 19 go build -tags "$tags" -ldflags "$ldflags" -o "$out" "$@")
}

# ---- Kubernetes + agnhost ---------------------------------------------------
k8s_ver=$(modver "$here/$k8s_mod" k8s.io/kubernetes)
k8s_time=$(modtime "$here/$k8s_mod" k8s.io/kubernetes)
k8s_minor=${k8s_ver#v1.}
k8s_minor=${k8s_minor%%.*}
k8s_ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ld+=" -X $p.gitVersion=$k8s_ver -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
	k8s_ld+=" -X $p.gitCommit=k8s.io/kubernetes@$k8s_ver -X $p.gitTreeState=clean -X $p.buildDate=$k8s_time"
done
k8s_cmds=(kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy)
k8s_pkgs=()
for c in "${k8s_cmds[@]}"; do k8s_pkgs+=("k8s.io/kubernetes/cmd/$c"); done
gobuild "$k8s_mod" 0 "" "$k8s_ld" "$bin/" "${k8s_pkgs[@]}"
for c in "${k8s_cmds[@]}"; do record "$c" "$k8s_ver" "k8s.io/kubernetes@$k8s_ver/cmd/$c"; done
k8s_dir=$(moddir "$here/$k8s_mod" k8s.io/kubernetes)
if [[ -z $release ]]; then
	# agnhost's own Makefile sets main.Version from test/images/agnhost/VERSION.
	agnhost_ver=$(<"$k8s_dir/test/images/agnhost/VERSION")
	gobuild kubernetes 0 "" "$k8s_ld -X main.Version=$agnhost_ver" "$bin/agnhost" k8s.io/kubernetes/test/images/agnhost
	record agnhost "$agnhost_ver" "k8s.io/kubernetes@$k8s_ver/test/images/agnhost"
fi

got=$("$bin/kubeadm" version -o short)
[[ $got == "$k8s_ver" ]] || die "kubeadm version -o short printed '$got', want $k8s_ver"
"$bin/kubeadm" config images list --kubernetes-version "$k8s_ver" >"$tmp/kubeadm-images.txt"
image_tag() { sed -n "s|^registry.k8s.io/\\(.*/\\)\\{0,1\\}$1:||p" "$tmp/kubeadm-images.txt"; }
etcd_image=$(image_tag etcd)
coredns_image=$(image_tag coredns)
pause_image=$(image_tag pause)
log "kubeadm images: etcd=$etcd_image coredns=$coredns_image pause=$pause_image"

# ---- pause (C, static) -------------------------------------------------------
log "gcc pause.c ($pause_image)"
nice -n 19 gcc -Os -Wall -Werror -static -DVERSION="v$pause_image-k8s.io/kubernetes@$k8s_ver" \
	-o "$bin/pause" "$k8s_dir/build/pause/linux/pause.c"
strip "$bin/pause"
record pause "$pause_image" "k8s.io/kubernetes@$k8s_ver/build/pause/linux/pause.c"

# ---- etcd --------------------------------------------------------------------
etcd_ver=$(modver "$here/$etcd_mod" go.etcd.io/etcd/server/v3)
[[ ${etcd_image%%-*} == "${etcd_ver#v}" ]] || die "etcd wrapper has $etcd_ver, kubeadm wants $etcd_image"
etcd_ld="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=gomod-$etcd_ver"
gobuild "$etcd_mod" 0 "" "$etcd_ld" "$bin/etcd" go.etcd.io/etcd/server/v3
gobuild "$etcd_mod" 0 "" "$etcd_ld" "$bin/etcdctl" go.etcd.io/etcd/etcdctl/v3
record etcd "$etcd_ver" "go.etcd.io/etcd/server/v3@$etcd_ver"
record etcdctl "$etcd_ver" "go.etcd.io/etcd/etcdctl/v3@$etcd_ver"

# ---- CoreDNS -------------------------------------------------------------------
coredns_ver=$(modver "$here/$coredns_mod" github.com/coredns/coredns)
[[ $coredns_ver == "$coredns_image" ]] || die "coredns wrapper has $coredns_ver, kubeadm wants $coredns_image"
gobuild "$coredns_mod" 0 "" "-s -w -X github.com/coredns/coredns/coremain.GitCommit=gomod-$coredns_ver" \
	"$bin/coredns" github.com/coredns/coredns
record coredns "$coredns_ver" "github.com/coredns/coredns@$coredns_ver"

# ---- what does not depend on the Kubernetes release: the default build only ------------
if [[ -z $release ]]; then
	# ---- flannel -------------------------------------------------------------------
	flannel_ver=$(modver "$here/flannel" github.com/flannel-io/flannel)
	flannel_dir=$(moddir "$here/flannel" github.com/flannel-io/flannel)
	# flanneld is upstream's main.go minus the tencentvpc backend import (its SDK module is not
	# served), generated from the pinned module rather than kept as a copy.
	tencent='_ "github.com/flannel-io/flannel/pkg/backend/tencentvpc"'
	grep -q "$tencent" "$flannel_dir/main.go" || die "$flannel_dir/main.go no longer imports the tencentvpc backend: drop this step"
	mkdir -p "$here/flannel/flanneld"
	grep -v "$tencent" "$flannel_dir/main.go" >"$here/flannel/flanneld/main.go"
	# Upstream builds amd64 flanneld with cgo (the udp backend needs it), linked statically.
	gobuild flannel 1 "" "-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$flannel_ver -extldflags -static" \
		"$bin/flanneld" ./flanneld
	record flanneld "$flannel_ver" "github.com/flannel-io/flannel@$flannel_ver (main.go without tencentvpc backend)"

	# ---- CNI plugins -----------------------------------------------------------------
	cni_ver=$(modver "$here/cni-plugins" github.com/containernetworking/plugins)
	cni_ld="-extldflags -static -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$cni_ver"
	cni_pkgs=(plugins/main/bridge plugins/ipam/host-local plugins/main/loopback plugins/meta/portmap)
	gobuild cni-plugins 0 "" "$cni_ld" "$bin/cni/" "${cni_pkgs[@]/#/github.com/containernetworking/plugins/}"
	for p in "${cni_pkgs[@]}"; do record "cni/${p##*/}" "$cni_ver" "github.com/containernetworking/plugins@$cni_ver/$p"; done

	# flannel's CNI plugin: github.com/flannel-io/cni-plugin is not served by the
	# module proxy; the same plugin lived in containernetworking/plugins until v0.9.1.
	fcni_ver=$(modver "$here/flannel-cni" github.com/containernetworking/plugins)
	gobuild flannel-cni 0 "" \
		"-extldflags -static -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$fcni_ver" \
		"$bin/cni/flannel" github.com/containernetworking/plugins/plugins/meta/flannel
	record cni/flannel "$fcni_ver" "github.com/containernetworking/plugins@$fcni_ver/plugins/meta/flannel"

	# ---- crictl ---------------------------------------------------------------------
	crictl_ver=$(modver "$here/cri-tools" sigs.k8s.io/cri-tools)
	gobuild cri-tools 0 "" "-X sigs.k8s.io/cri-tools/pkg/version.Version=${crictl_ver#v}" \
		"$bin/crictl" sigs.k8s.io/cri-tools/cmd/crictl
	record crictl "$crictl_ver" "sigs.k8s.io/cri-tools@$crictl_ver/cmd/crictl"

	# ---- containerd -------------------------------------------------------------------
	ctrd_ver=$(modver "$here/containerd" github.com/containerd/containerd/v2)
	ctrd_pkg=github.com/containerd/containerd/v2
	ctrd_ld="-s -w -X $ctrd_pkg/version.Version=$ctrd_ver -X $ctrd_pkg/version.Revision=gomod-$ctrd_ver -X $ctrd_pkg/version.Package=$ctrd_pkg"
	gobuild containerd 0 "urfave_cli_no_docs" "$ctrd_ld" "$bin/" "$ctrd_pkg/cmd/containerd" "$ctrd_pkg/cmd/ctr"
	gobuild containerd 0 "urfave_cli_no_docs no_grpc" "$ctrd_ld" "$bin/" "$ctrd_pkg/cmd/containerd-shim-runc-v2"
	for c in containerd ctr containerd-shim-runc-v2; do record "$c" "$ctrd_ver" "$ctrd_pkg@$ctrd_ver/cmd/$c"; done

	# ---- runc (cgo, libseccomp, static-pie as upstream's "make static") ------------------
	runc_ver=$(modver "$here/runc" github.com/opencontainers/runc)
	(
		cd "$here/runc"
		log "go build (runc): github.com/opencontainers/runc"
		CGO_ENABLED=1 nice -n 19 go build -buildmode=pie -tags "seccomp urfave_cli_no_docs netgo osusergo" \
			-ldflags "-X main.gitCommit=gomod-$runc_ver -linkmode external -extldflags -static-pie" \
			-o "$bin/runc" github.com/opencontainers/runc
	)
	record runc "$runc_ver" "github.com/opencontainers/runc@$runc_ver (libseccomp-dev $seccomp_version)"
fi

# ---- checks and metadata ---------------------------------------------------------------
check_static

{
	printf 'key\t%s\n' "$key"
	printf 'go\t%s\ngcc\t%s\nlibseccomp-dev\t%s\n' "$go_version" "$gcc_version" "$seccomp_version"
	printf 'goos/goarch\t%s/%s\n' "$GOOS" "$GOARCH"
	[[ -z $release ]] || printf 'release\t%s (only what depends on it; the rest is the default build'"'"'s)\n' "$release"
} >"$tmp/BUILDINFO"
(cd "$tmp" && find bin -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) >"$tmp/SHA256SUMS"

finish_tree
