# shellcheck shell=bash
# What build.sh, build-storage.sh and build-ingress.sh share, sourced by each: reading a
# wrapper module's pins, and the cached output tree (built under a temporary name, renamed
# into place only when complete). The caller defines log and die and sets out_root.
# shellcheck disable=SC2154 # out_root, log and die come from the sourcing script

# modver/modtime/moddir DIR MODULE: version, release time and module-cache directory of
# MODULE as the wrapper module in DIR selects it
modver() { (cd "$1" && go list -m -f '{{.Version}}' "$2"); }
modtime() { (cd "$1" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' "$2"); }
moddir() { (cd "$1" && go mod download -json "$2" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'); }

# wrapper_sums DIR: the checksums of every wrapper module's pins under DIR (a key input)
wrapper_sums() {
	(cd "$1" && find . -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) \
		-print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
}

# gobuild_static DIR TAGS LDFLAGS OUT PKG...: go build in the wrapper module DIR with
# CGO_ENABLED=0 (as every upstream of build-storage.sh and build-ingress.sh builds) and no
# build ID, so that rebuilds are byte-identical
gobuild_static() {
	local dir=$1 tags=$2 ldflags=$3 out=$4
	shift 4
	log "go build ($(basename "$dir")): $*"
	(cd "$dir" && CGO_ENABLED=0 nice -n 19 go build -tags "$tags" -ldflags "-buildid= $ldflags" -o "$out" "$@")
}

# exit_if_built KEY: sets final; when that tree exists, prints it and exits (warm run)
exit_if_built() {
	key=$1
	final=$out_root/$key
	if [[ -d $final ]]; then
		log "up to date: $final"
		echo "$final"
		exit 0
	fi
}

# start_tree: the temporary tree (tmp, removed on exit unless finished), its bin/ and its
# VERSIONS manifest, filled by record COMPONENT VERSION SOURCE
start_tree() {
	mkdir -p "$out_root"
	tmp=$(mktemp -d "$out_root/.tmp-$key.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	bin=$tmp/bin
	mkdir -p "$bin"
	manifest=$tmp/VERSIONS
	printf '# component\tversion\tsource\n' >"$manifest"
}
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$manifest"; }

# check_static: every file under bin/ is statically linked (no program interpreter)
check_static() {
	local f
	while IFS= read -r -d '' f; do
		if readelf -l "$f" | grep -q 'Requesting program interpreter'; then
			die "$f is dynamically linked"
		fi
	done < <(find "$bin" -type f -print0)
}

# finish_tree: renames the finished tree to its final path and prints that path
finish_tree() {
	chmod -R a+rX "$tmp"
	if mv -T "$tmp" "$final" 2>/dev/null; then
		trap - EXIT
	else
		[[ -d $final ]] || die "could not rename $tmp to $final"
		log "another run finished $final first; keeping it"
	fi
	log "done: $final"
	echo "$final"
}
