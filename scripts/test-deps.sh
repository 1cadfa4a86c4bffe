#!/usr/bin/env bash
# Install and prepare the real validators used by kubestick's test suite.
#
# Target: Debian 12 (bookworm) host, run as root. Network: only the Debian apt
# mirror and PyPI are needed. Idempotent: a second run that finds everything in
# place does no network access and takes about a second.
#
# Produces (relative to the repository root):
#   target/test-tools/venv     Python venv with kubernetes-validate and cyclonedx-python-lib
#   target/test-tools/trixie   Debian trixie tree (cloud-init, keepalived, systemd, udev)
#                              for `chroot target/test-tools/trixie ...`
# See scripts/validators.md for the validator commands.
#
# Environment overrides:
#   KUBESTICK_DEBIAN_MIRROR   mirror URL for the trixie tree (default: the host's
#                             Debian mirror from apt, else http://deb.debian.org/debian)
#   KUBESTICK_REBUILD_TREE=1  rebuild the trixie tree even if it is present
set -euo pipefail

repo_root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

tools_dir=target/test-tools
venv_dir=$tools_dir/venv
tree_dir=$tools_dir/trixie
tree_tmp=$tools_dir/trixie-tree.tmp
tree_old=$tools_dir/trixie-tree.old
tree_stamp=.kubestick-test-tree

kv_version=1.37.0
cdx_version=11.12.0
tree_suite=trixie
tree_packages=cloud-init,keepalived,udev,systemd,python3-netplan
host_packages=(
  shellcheck ignition systemd mmdebstrap e2fsprogs dosfstools mtools fdisk
  openssl keepalived python3-venv ca-certificates openssh-client iproute2
  gcc libc6-dev libseccomp-dev pkg-config
)

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C.UTF-8

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'test-deps: error: %s\n' "$*" >&2; exit 1; }
need_root() { [[ $(id -u) -eq 0 ]] || die "$1 needs root; run this script as root"; }

# Temporary files/directories to remove on exit (never contain mounts).
cleanup_paths=()
cleanup() {
  local f
  for f in "${cleanup_paths[@]}"; do rm -rf -- "$f"; done
}
trap cleanup EXIT

# Serialize concurrent runs (e.g. parallel CI jobs sharing one checkout).
mkdir -p "$tools_dir"
exec 9>"$tools_dir/.lock"
flock 9

# ---------------------------------------------------------------------------
# 1. Host packages
# ---------------------------------------------------------------------------
pkg_installed() {
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

missing=()
for p in "${host_packages[@]}"; do
  pkg_installed "$p" || missing+=("$p")
done

if ((${#missing[@]})); then
  need_root "installing ${missing[*]}"
  log "apt-get install ${missing[*]}"
  # Keep package maintainer scripts from starting services (keepalived) on
  # this host; only add a policy if the host has none, and remove it after.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    cleanup_paths+=(/usr/sbin/policy-rc.d)
  fi
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # The package enables keepalived.service for the next boot; this host only
  # needs the binary for `keepalived --config-test`.
  if [[ " ${missing[*]} " == *" keepalived "* ]]; then
    systemctl --quiet disable keepalived.service 2>/dev/null || true
  fi
fi

# ---------------------------------------------------------------------------
# 2. kubernetes-validate and the CycloneDX library (BOM schema validation) in a
#    private venv (never the system Python)
# ---------------------------------------------------------------------------
kv_bin=$venv_dir/bin/kubernetes-validate
kv_have=$("$venv_dir/bin/python" -c \
  'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null || true)
if [[ $kv_have != "$kv_version" ]]; then
  log "creating venv $venv_dir with kubernetes-validate==$kv_version"
  # /usr/bin/python3 explicitly: a pyenv/conda python3 on PATH must not be used.
  /usr/bin/python3 -m venv --clear "$venv_dir"
  "$venv_dir/bin/python" -m pip install -q --disable-pip-version-check \
    "kubernetes-validate==$kv_version"
fi
cdx_have=$("$venv_dir/bin/python" -c \
  'import importlib.metadata as m; print(m.version("cyclonedx-python-lib"))' 2>/dev/null || true)
if [[ $cdx_have != "$cdx_version" ]]; then
  log "installing cyclonedx-python-lib[json-validation]==$cdx_version into $venv_dir"
  "$venv_dir/bin/python" -m pip install -q --disable-pip-version-check \
    "cyclonedx-python-lib[json-validation]==$cdx_version"
fi

# ---------------------------------------------------------------------------
# 3. Debian trixie tree for strict cloud-init/keepalived/systemd checks
# ---------------------------------------------------------------------------
# The Debian mirror apt uses on this host (deb822 or one-line sources alike).
debian_mirror() {
  if [[ -n ${KUBESTICK_DEBIAN_MIRROR:-} ]]; then
    printf '%s\n' "${KUBESTICK_DEBIAN_MIRROR%/}"
    return
  fi
  local codename uri
  # shellcheck source=/dev/null
  codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
  # shellcheck disable=SC2016 # $(...) are apt format fields, not shell
  uri=$(apt-get indextargets --format '$(REPO_URI) $(CODENAME) $(LABEL)' \
          'Created-By: Packages' 2>/dev/null |
        awk -v c="$codename" '$2 == c && $3 == "Debian" { print $1; exit }')
  printf '%s\n' "${uri:-http://deb.debian.org/debian}" | sed 's:/*$::'
}

# Unmount anything left mounted below $1 (an interrupted mmdebstrap --mode=root
# leaves proc/sys/dev mounts), deepest first, then delete it without ever
# crossing into another filesystem.
remove_tree() {
  local dir=$1 abs m
  [[ -e $dir ]] || return 0
  abs=$(realpath -- "$dir")
  while read -r m; do
    umount -l -- "$m" 2>/dev/null || true
  done < <(awk -v d="$abs" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts |
           sort -r)
  rm -rf --one-file-system -- "$dir"
}

tree_want="suite=$tree_suite packages=$tree_packages rev=2"
tree_have=$(cat -- "$tree_dir/$tree_stamp" 2>/dev/null || true)
if [[ $tree_have != "$tree_want" || ${KUBESTICK_REBUILD_TREE:-0} == 1 ]]; then
  need_root "building $tree_dir"
  mirror=$(debian_mirror)
  log "building $tree_dir ($tree_suite: $tree_packages) from $mirror"
  remove_tree "$tree_tmp"
  remove_tree "$tree_old"
  start=$SECONDS
  # keepalived_script: the conventional unprivileged script_user, so configs
  # using `enable_script_security` + `script_user keepalived_script` check.
  # shellcheck disable=SC2016 # hooks are evaluated by mmdebstrap with $1=tree
  mmdebstrap --variant=minbase --mode=root --include="$tree_packages" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --customize-hook='chroot "$1" useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin keepalived_script' \
    --customize-hook='rm -f "$1/etc/hostname"' \
    "$tree_suite" "$tree_tmp" "deb $mirror $tree_suite main"
  printf '%s\n' "$tree_want" >"$tree_tmp/$tree_stamp"
  # Swap into place: a finished tree only ever appears via rename(2).
  if [[ -e $tree_dir ]]; then mv -T -- "$tree_dir" "$tree_old"; fi
  mv -T -- "$tree_tmp" "$tree_dir"
  remove_tree "$tree_old"
  log "trixie tree built in $((SECONDS - start)) s"
fi

# ---------------------------------------------------------------------------
# 4. Smoke checks (offline, < 1 s): each validator accepts a good input
# ---------------------------------------------------------------------------
smoke_dir=$(mktemp -d -p "$tree_dir/tmp" test-deps.XXXXXX)
cleanup_paths+=("$smoke_dir")
cat >"$smoke_dir/deploy.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: smoke}
spec:
  selector: {matchLabels: {app: smoke}}
  template:
    metadata: {labels: {app: smoke}}
    spec: {containers: [{name: smoke, image: "registry.k8s.io/pause:3.10"}]}
YAML
printf '#cloud-config\nhostname: smoke\nmanage_etc_hosts: true\n' >"$smoke_dir/user-data"
printf '{"ignition":{"version":"3.3.0"}}\n' >"$smoke_dir/config.ign"
"$kv_bin" --strict --quiet -k 1.36 "$smoke_dir/deploy.yaml" ||
  die "kubernetes-validate smoke check failed"
chroot "$tree_dir" cloud-init schema --config-file "/tmp/${smoke_dir##*/}/user-data" >/dev/null ||
  die "cloud-init schema smoke check failed in $tree_dir"
[[ -z $(ignition-validate "$smoke_dir/config.ign" 2>&1) ]] ||
  die "ignition-validate smoke check failed"

# ---------------------------------------------------------------------------
# 5. Versions
# ---------------------------------------------------------------------------
kv_schemas() {
  "$venv_dir/bin/python" - <<'PY'
import importlib.resources as r, re
d = r.files("kubernetes_validate") / "kubernetes-json-schema"
v = sorted({tuple(map(int, m.groups())) for p in d.iterdir()
            if (m := re.match(r"v(\d+)\.(\d+)\.\d+-", p.name))})
print(f"{v[0][0]}.{v[0][1]}..{v[-1][0]}.{v[-1][1]}")
PY
}
first_line() { "$@" 2>&1 | head -n 1; }
tree_dpkg_version() {
  dpkg-query --admindir="$tree_dir/var/lib/dpkg" -W -f='${Version}' "$1"
}

printf '%-28s %s\n' \
  shellcheck "$(shellcheck --version | sed -n 's/^version: //p')" \
  ignition-validate "$(first_line ignition-validate --version)" \
  systemd-analyze "$(first_line systemd-analyze --version)" \
  mmdebstrap "$(first_line mmdebstrap --version)" \
  mke2fs "$(mke2fs -V 2>&1 | head -n 1)" \
  mkfs.fat "$(mkfs.fat --version 2>/dev/null | head -n 1 || true)" \
  mtools "$(first_line mtools --version)" \
  sfdisk "$(first_line sfdisk --version)" \
  openssl "$(first_line openssl version)" \
  keepalived "$(first_line keepalived --version)" \
  kubernetes-validate "$(first_line "$kv_bin" --version) (schemas: $(kv_schemas))" \
  "trixie: cloud-init" "$(tree_dpkg_version cloud-init)" \
  "trixie: keepalived" "$(tree_dpkg_version keepalived)" \
  "trixie: systemd" "$(tree_dpkg_version systemd)" \
  "trixie: python3-netplan" "$(tree_dpkg_version python3-netplan)"
