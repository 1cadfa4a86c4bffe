#!/usr/bin/env bash
# Builds, for linux/amd64, the ingress components of the QEMU rehearsal (issue 25, item 1)
# that can be built here from the Go module proxy alone: traefik v3.6.12 and pebble v2.10.3
# (pebble and pebble-challtestsrv). Plain binaries only.
#
# Not built, and why (ingress/README.md): traefik v3.7.13 (v3.7.11 to v3.7.13 replace their
# nested module github.com/traefik/traefik/dynamic/ext with ./pkg/config/dynamic/ext, which
# the module zip leaves out and the proxy refuses; eight more of v3.7.13's dependencies are
# refused too), so traefik is v3.6.12, the newest served version that builds;
# cert-manager v1.21.2 (all four binaries live in the nested modules
# github.com/cert-manager/cert-manager/cmd/{controller,webhook,cainjector,acmesolver},
# which the proxy refuses).
#
# Output: target/real-ingress/<key>/ where <key> hashes this script (pins and recipe), the
# wrapper modules and the Go version. The tree is built in a temporary directory next to it
# and renamed into place when complete. If <key>/ exists the script only prints its path.
# The last line of stdout is always the output directory.
#
# Environment:
#   REAL_INGRESS_DIR      output root (default: <repo>/target/real-ingress)
#   GOCACHE, GOMODCACHE   honoured as usual
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
wrappers=$here/ingress
out_root=${REAL_INGRESS_DIR:-$repo/target/real-ingress}

log() { printf '[real-ingress] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source-path=SCRIPTDIR source=build-lib.sh
. "$here/build-lib.sh"

command -v go >/dev/null || die "go not found"

export GOTOOLCHAIN=local GOOS=linux GOARCH=amd64 CGO_ENABLED=0
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
export GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}
# Fixed time for every file written (pebble v2.10.3's release time).
export SOURCE_DATE_EPOCH=1794336772

go_version=$(go env GOVERSION)

# ---- cache key -------------------------------------------------------------------------
key_inputs() {
	printf 'go=%s goos=%s goarch=%s\n' "$go_version" "$GOOS" "$GOARCH"
	sha256sum "$here/build-ingress.sh" "$here/build-lib.sh"
	wrapper_sums "$wrappers"
}
exit_if_built "$(key_inputs | sha256sum | cut -c1-16)"

start_tree

# ---- traefik ---------------------------------------------------------------------------------
traefik_mod=github.com/traefik/traefik/v3
traefik_ver=$(modver "$wrappers/traefik" "$traefik_mod")
traefik_time=$(modtime "$wrappers/traefik" "$traefik_mod")
traefik_dir=$(moddir "$wrappers/traefik" "$traefik_mod")
# The web UI (dashboard) is built by upstream with node/yarn into webui/static before
# `go build`, and embedded (webui/embed.go: //go:embed static). The module zip carries only
# the placeholder webui/static/DONT-EDIT-FILES-IN-THIS-DIRECTORY.md (upstream's
# `make clean-webui` state), so traefik builds without the dashboard: the API and
# everything else work, and `api.dashboard: true` only logs "parsing index template" and
# serves no dashboard pages. Stop if a future version ships the assets or drops the embed.
[[ -f $traefik_dir/webui/static/DONT-EDIT-FILES-IN-THIS-DIRECTORY.md ]] ||
	die "$traefik_dir/webui/static has no placeholder: check how the web UI is embedded now"
[[ ! -e $traefik_dir/webui/static/index.html ]] ||
	die "$traefik_dir carries the built web UI now: update ingress/README.md"
webui="none (module zip has only the webui/static placeholder)"
# Upstream's release (.goreleaser.yml.tmpl, .github/workflows/release.yaml): CGO_ENABLED=0,
# -trimpath, -s -w, pkg/version.{Version={{.Version}} (tag without v),
# Codename=$CODENAME (ramequin for v3.6), BuildDate={{.Date}} (RFC 3339)}; the build date
# here is the module's release time, for reproducibility.
traefik_codename=ramequin
traefik_ld="-s -w -X $traefik_mod/pkg/version.Version=${traefik_ver#v}"
traefik_ld+=" -X $traefik_mod/pkg/version.Codename=$traefik_codename -X $traefik_mod/pkg/version.BuildDate=$traefik_time"
gobuild_static "$wrappers/traefik" "" "$traefik_ld" "$bin/traefik" "$traefik_mod/cmd/traefik"
record traefik "$traefik_ver" "$traefik_mod@$traefik_ver/cmd/traefik (no web UI assets)"

# ---- pebble ------------------------------------------------------------------------------------
pebble_mod=github.com/letsencrypt/pebble/v2
pebble_ver=$(modver "$wrappers/pebble" "$pebble_mod")
# Upstream's release.yml: CGO_ENABLED=0, -trimpath, -s -w -X 'main.version=<tag> (<commit>)';
# the proxy gives no commit, so the module version stands in for it.
pebble_ld="-s -w -X 'main.version=$pebble_ver ($pebble_mod@$pebble_ver)'"
for c in pebble pebble-challtestsrv; do
	gobuild_static "$wrappers/pebble" "" "$pebble_ld" "$bin/$c" "$pebble_mod/cmd/$c"
	record "$c" "$pebble_ver" "$pebble_mod@$pebble_ver/cmd/$c"
done

# ---- checks and metadata --------------------------------------------------------------------
check_static

got=$("$bin/traefik" version)
grep -qE "^Version:[[:space:]]+${traefik_ver#v}$" <<<"$got" || die "traefik version printed: $got"
grep -qE "^Codename:[[:space:]]+$traefik_codename$" <<<"$got" || die "traefik version printed: $got"
got=$("$bin/pebble" -version)
[[ $got == "Pebble version: $pebble_ver ($pebble_mod@$pebble_ver)" ]] || die "pebble -version printed: $got"
got=$("$bin/pebble-challtestsrv" -help 2>&1) || die "pebble-challtestsrv -help failed: $got"
grep -q -- '-http01' <<<"$got" || die "pebble-challtestsrv -help printed: $got"

{
	printf 'key\t%s\n' "$key"
	printf 'go\t%s\n' "$go_version"
	printf 'goos/goarch\t%s/%s (CGO_ENABLED=0, -trimpath, -buildid=)\n' "$GOOS" "$GOARCH"
	printf 'SOURCE_DATE_EPOCH\t%s\n' "$SOURCE_DATE_EPOCH"
	printf 'traefik web UI\t%s\n' "$webui"
	printf 'not built\ttraefik v3.7.13 (v3.6.12 instead), cert-manager v1.21.2 (ingress/README.md)\n'
} >"$tmp/BUILDINFO"
find "$tmp" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$tmp" && find bin -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) >"$tmp/SHA256SUMS"
touch -d "@$SOURCE_DATE_EPOCH" "$tmp/SHA256SUMS" "$tmp"

finish_tree
