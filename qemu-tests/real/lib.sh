#!/usr/bin/env bash
# What the real drills share (drills.sh: the cluster forms and survives; upgrade.sh: a
# Kubernetes upgrade by re-flashing): the VMs' sizing and the bounds, the work directory, the
# drill verdicts, kubectl through the VIP (kc) and inside a node (kin), and the readers of
# the cluster's state. Sourced; the caller sets N (control-plane nodes expected) and traps
# EXIT with its own summary, which ends with keep_logs_and_clean.
# shellcheck source=qemu-tests/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

# shellcheck disable=SC2034 # sizing and bounds for the scripts that source this
{
  CPUS=${REAL_CPUS:-2}
  MEMORY=${REAL_MEMORY:-2560}
  STICK=${REAL_STICK:-full}
  # Bounds no loaded 2-core machine misses under TCG; the measured times are reported.
  FORM_BOUND=${FORM_BOUND:-3600}
  STEP_BOUND=${STEP_BOUND:-1800}
}

if [[ -n ${REAL_WORK:-} ]]; then
  work=$REAL_WORK
  mkdir -p "$work"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/kubestick-real.XXXXXX")
fi
out=$work/out
declare -a summary=()

# keep_logs_and_clean STATUS: after a failed run, every serial log and the build and `vm`
# logs are kept beside the work directory; then the VMs are removed (kept with REAL_WORK).
keep_logs_and_clean() {
  local status=$1
  if ((status != 0)) && [[ -d $out/vm ]]; then
    mkdir -p "${work}-logs"
    for f in "$out"/vm/*/serial.log; do cp "$f" "${work}-logs/$(basename "$(dirname "$f")").serial.log"; done
    cp "$work/build.log" "$work/up.log" "${work}-logs/" 2>/dev/null || true
    log "serial logs of this run kept in ${work}-logs"
  fi
  if [[ -n ${REAL_WORK:-} ]]; then
    log "kept $work (VMs still running: \`$KUBESTICK vm destroy -o $out\` removes them)"
    return
  fi
  "$KUBESTICK" vm destroy -o "$out" >/dev/null 2>&1 || true
  rm -rf "$work"
}

vm() { "$KUBESTICK" vm "$@"; }
now() { date +%s; }
pass() { summary+=("drill $1 PASS ${2}s"); log "PASS drill $1 (${2}s): $3"; }
# drill_fail N NODE MESSAGE: the message, what NODE's console says of its first-boot steps,
# and what the cluster looks like; the run stops (its serial logs are kept).
drill_fail() {
  summary+=("drill $1 FAIL")
  {
    printf 'FAIL drill %s: %s\n' "$1" "$3"
    printf -- '--- %s: kubestick lines on its console (%s) ---\n' "$2" "$out/vm/$2/serial.log"
    tr -d '\r' <"$out/vm/$2/serial.log" | grep -aE 'kubestick[:-]' | tail -n 20 || true
    printf -- '--- the cluster ---\n'
    # After drill 8 the host's clock is a year behind the certificates: read from the node.
    local reader=(kc)
    kc get nodes >/dev/null 2>&1 || reader=(kin "$2")
    "${reader[@]}" get nodes -o wide 2>&1 || true
    "${reader[@]}" get pods -A -o wide 2>&1 | grep -v ' Running ' || true
  } >&2
  exit 1
}

# real_components: the real components built (cached) and their mirror and lock, with the
# releases REAL_RELEASES names (mirror.sh): sets mirror, KUBECTL (the default release's) and
# agnhost (the test workload's image, by tag and digest).
real_components() {
  mirror=$(bash "$QT_DIR/real/mirror.sh" | tail -n 1)
  KUBECTL=$(bash "$QT_DIR/real/build.sh" | tail -n 1)/bin/kubectl
  # shellcheck disable=SC2034 # for the drills that run it
  agnhost=$(python3 -c 'import sys, tomllib
for i in tomllib.load(open(sys.argv[1], "rb"))["image"]:
    if i["name"] == "agnhost": print(i["reference"] + "@" + i["digest"])' "$mirror/artifacts.lock")
}

# kubectl through the VIP, with the kubeconfig `kubestick vm` writes.
kc() { "$KUBECTL" --kubeconfig "$out/vm/kubeconfig" --request-timeout=30s "$@"; }

read_ports() {
  eval "$(vm status -o "$out" --json | python3 -c '
import json, sys
for n in json.load(sys.stdin)["nodes"]:
    print("ssh_port[%s]=%d" % (n["name"], n["ssh_port"]))
')"
}
vip_holder() {
  vm status -o "$out" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["api"].get("holder") or "")'
}

# --- helpers reading the cluster --------------------------------------------------------
# ready_nodes: the names of the nodes whose Ready condition is True.
ready_nodes() {
  kc get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null |
    awk '$2 == "True" { print $1 }'
}
is_ready() { ready_nodes | grep -qx "$1"; }
boot_id() { kc get node "$1" -o jsonpath='{.status.nodeInfo.bootID}' 2>/dev/null; }
# etcdctl NODE ARGS...: etcdctl inside NODE's etcd pod, with the health-check client cert.
etcdctl() {
  local node=$1
  shift
  kc -n kube-system exec "etcd-$node" -- etcdctl --endpoints=https://127.0.0.1:2379 \
    --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
    --key=/etc/kubernetes/pki/etcd/healthcheck-client.key --command-timeout=15s "$@"
}
# etcd_members NODE: "name id learner" per member, as NODE's etcd sees them.
etcd_members() {
  etcdctl "$1" member list -w json 2>/dev/null | python3 -c '
import json, sys
for m in json.load(sys.stdin)["members"]:
    print(m.get("name") or "(unstarted)", format(m["ID"], "x"), "learner" if m.get("isLearner") else "voter")'
}
# etcd_whole NODE: one voting member per control-plane node, each endpoint healthy.
etcd_whole() {
  local members
  members=$(etcd_members "$1") || return 1
  [[ $(grep -c ' voter$' <<<"$members") == "$N" && $(wc -l <<<"$members") == "$N" ]] || return 1
  [[ $(etcdctl "$1" endpoint health --cluster 2>&1 | grep -c 'is healthy') == "$N" ]]
}
# unready_pods NAMESPACE...: pods not Running with every container ready.
unready_pods() {
  local ns
  for ns in "$@"; do
    kc -n "$ns" get pods -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.phase}{" "}{.status.containerStatuses[*].ready}{"\n"}{end}' |
      awk -v ns="$ns" '$2 != "Running" || / false/ { print ns "/" $1 " " $2 }'
  done
}
# until_true BOUND WHAT COMMAND...: retries COMMAND every 5 s for up to BOUND seconds.
until_true() {
  local bound=$1 what=$2 start=$SECONDS
  shift 2
  until "$@"; do
    if ((SECONDS - start > bound)); then
      log "gave up after ${bound}s waiting for $what"
      return 1
    fi
    sleep 5
  done
}
# new_boot_ready OLD_BOOT_ID KUBECTL...: the node KUBECTL reads (a `get node` command) runs a
# boot other than OLD_BOOT_ID and is Ready. The Ready condition alone may be the one written
# before a power-off, until a controller or the new kubelet changes it; the boot ID is
# written only by the new kubelet.
new_boot_ready() {
  local got
  got=$("${@:2}" -o jsonpath='{.status.nodeInfo.bootID}{" "}{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) || return 1
  [[ $got == *" True" && ${got% *} != "$1" && -n ${got% *} ]]
}
# back_ready NODE OLD_BOOT_ID: NODE runs a new boot and is Ready.
back_ready() { new_boot_ready "$2" kc get node "$1"; }
power_on_again() {
  vm start "$1" -o "$out" "${@:2}" >>"$work/up.log" 2>&1 || fail "kubestick vm start $1 failed" "$work/up.log"
  read_ports
}

# kin NODE ARGS...: kubectl inside NODE, with its own admin.conf (for when the host cannot
# check the nodes' certificates: their clocks ahead of it).
# (The remote shell parses the command again: every argument is quoted for it.)
kin() { ssh_node "$1" "sudo kubectl --kubeconfig /etc/kubernetes/admin.conf --request-timeout=30s $(printf '%q ' "${@:2}")"; }
