#!/usr/bin/env bash
# The real rehearsal (`make real-test`): kubestick's images built from the real components
# (build.sh, mirror.sh: Kubernetes, etcd, containerd, flannel... built here from Go modules),
# booted as QEMU VMs with `kubestick vm` (nothing leaves 127.0.0.1), and checked with the
# real kubectl through the kubeconfig `kubestick vm` writes, as a person would check PCs:
#   1  the cluster forms by itself: optiplex-1..3 powered on together are Ready, all
#      control-plane and schedulable; etcd has 3 healthy voting members; every kube-system
#      and kube-flannel pod is Running and ready
#   2  pod networking: agnhost on every node; each pod reaches the other two over flannel
#      vxlan (HTTP, answered by the pod asked); a ClusterIP Service answers from every node's
#      host; its name resolves through cluster DNS inside every pod
#   3  the VIP holder loses power: kubectl through the VIP answers again (measured, reported
#      against FAILOVER_TARGET), etcd keeps quorum (a write succeeds), and the node powered on
#      again is Ready with a healthy etcd member
#   4  a reboot repeats no first-boot step (done markers, journal) and the node is Ready again
#   5  a worker (optiplex-4) powered on after the cluster formed joins and is Ready
#   6  re-flashed sticks, a joining node and then the init node: each replaces its stale etcd
#      member, is Ready again, and etcd has exactly 3 members
#   7  a whole-house power cut: every node loses power at once and comes back in another
#      order (the reverse), REAL_POWER_PAUSE (60) seconds apart; every node is Ready again,
#      etcd whole, no first-boot step ran again; the time until all are Ready is reported
#   8  a year later: the nodes are shut down and started with their clocks
#      REAL_CLOCK_AHEAD (400) days ahead, past the end of every certificate kubeadm issued
#      (set 300 for "just inside the 90-day renewal margin"); kubestick-certs renews by
#      itself, the API answers through the VIP with a certificate valid for another year,
#      etcd is healthy, the nodes (the late worker too, when it ran) are Ready. Checked
#      from inside the nodes (their clocks are ahead of the host's). It always runs last:
#      the clocks stay ahead.
#   9  calm, as a number: the formed cluster left alone for REAL_CALM_SECONDS (1800);
#      restarts of control-plane containers, etcd leader changes, failed /readyz through the
#      VIP every 5 s, and observe.py's figures (idle CPU by process, stick writes per day,
#      etcd WAL fsync p99). Reported, not asserted; it fails only if the cluster fell apart.
# The run ends with one summary line of every drill and the time from power-on to Ready.
# Usage: drills.sh [DRILL...] (default: all that fit), run in the order given after drill 1,
# which always runs first (the others need its cluster). REAL_NODES="optiplex-1 ..." names
# the control-plane nodes powered on together (default: all three where they fit, below;
# drills 3 and 6 need three).
# Sizing: each VM gets REAL_CPUS (default 2, kubeadm's preflight minimum for a control-plane
# node) and REAL_MEMORY MiB (default 2560); REAL_STICK=usb2 throttles every boot disk to a
# cheap USB 2 stick (`kubestick vm --stick`; default full speed). Three real control-plane
# nodes need KVM or more host cores than this project's machines have: under TCG one idle
# control-plane node keeps 1.1 host cores busy, and on 2 cores two of them already restart
# each other's API servers under liveness probes and lose etcd's leader. Where KVM does not
# boot the image and the host has fewer than REAL_TCG_CORES_FOR_THREE (6) cores, the
# default is the largest real check that fits, and the summary says what was skipped: the
# init node, then drills 5 (late worker), 2 (pod networking across the two nodes) and 4
# (reboot of the init node). REAL_WORK=DIR keeps the VMs and reuses a rehearsal still
# running there. Every serial log is kept on failure.
set -euo pipefail
# shellcheck source=qemu-tests/real/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

# The drills run in the order given (drill 1 first, always: the others need its cluster).
asked=()
for d in "$@"; do
  for n in $d; do
    [[ $n =~ ^[1-9]$ ]] || { echo "usage: $0 [DRILL...] (drills are 1 to 9)" >&2; exit 2; }
    asked+=("$n")
  done
done
declare -A want=()
order=()
skipped=()
plan() {
  local n
  for n in 1 "$@"; do
    [[ -n ${want[$n]:-} ]] || order+=("$n")
    want[$n]=1
  done
  # Drill 8 leaves the clocks a year ahead: whatever follows it could not trust them.
  if [[ -n ${want[8]:-} ]]; then
    local rest=()
    for n in "${order[@]}"; do [[ $n == 8 ]] || rest+=("$n"); done
    order=("${rest[@]}" 8)
  fi
}

WORKER=optiplex-4
FAILOVER_TARGET=${FAILOVER_TARGET:-5}
FAILOVER_BOUND=${FAILOVER_BOUND:-120}
NS=kubestick-drills
formed=

finish() {
  local status=$?
  if ((status != 0)) && [[ " ${summary[*]} " != *" FAIL"* ]]; then
    summary+=("stopped by an unexpected error (exit status $status; see above)")
  fi
  {
    printf 'real-test:'
    printf ' %s;' "${summary[@]}"
    ((${#skipped[@]} == 0)) || printf ' drills %s SKIPPED (three control-plane VMs do not fit here);' "${skipped[*]}"
    printf ' %s control-plane nodes Ready %s after power-on' "${N:-?}" "${formed:-never}"
    [[ -z ${attempts:-} ]] || printf '; kubeadm: %s' "$attempts"
    printf '\n'
  } >&2
  keep_logs_and_clean "$status"
}
trap finish EXIT


# --- the real components, the images, the VMs ------------------------------------------
real_components

# size_control_plane ACCEL: the control-plane nodes to power on together and the drills
# to run. Three real control-plane VMs need KVM or enough host cores for TCG (one idle
# control-plane node under TCG keeps 1.1 host cores busy); REAL_NODES decides instead.
size_control_plane() {
  local cores
  cores=$(nproc)
  if [[ -n ${REAL_NODES:-} ]]; then
    read -ra NODES <<<"$REAL_NODES"
  elif [[ $1 == kvm ]] || ((cores >= ${REAL_TCG_CORES_FOR_THREE:-6})); then
    NODES=(optiplex-1 optiplex-2 optiplex-3)
  else
    NODES=(optiplex-1)
    log "notice: TCG on $cores host cores holds one real control-plane node, not three: running the init node and a late worker (set REAL_NODES to insist)"
  fi
  N=${#NODES[@]}
  if ((${#asked[@]})); then
    if ((N != 3)) && [[ " ${asked[*]} " =~ \ [36]\  ]]; then
      echo "drills 3 and 6 need the three control-plane nodes (REAL_NODES=\"${NODES[*]}\")" >&2
      exit 2
    fi
    plan "${asked[@]}"
  elif ((N == 3)); then
    plan 9 2 3 4 5 6 7 8
  else
    # The worker first, so that pod networking crosses two nodes.
    plan 9 5 2 4 7 8
    skipped=(3 6)
  fi
}

running=
if [[ -n ${REAL_WORK:-} && -f $out/vm/kubeconfig ]] && vm status -o "$out" 2>/dev/null | grep -q 'running ('; then
  running=1
  log "reusing the rehearsal running in $work"
  size_control_plane "$(vm status -o "$out" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["accel"])')"
else
  rm -rf "$out"
  [[ -f $work/id ]] || ssh-keygen -q -t ed25519 -N '' -C kubestick-real -f "$work/id"
  with_ssh_key "$QT_DIR/real/cluster.toml" "$work/cluster.toml" "$work/id.pub"
  log "building the rehearsal images from the real components ($mirror)"
  "$KUBESTICK" build "$work/cluster.toml" -o "$out" --lock "$mirror/artifacts.lock" --mirror "$mirror/mirror" \
    --cache "${KUBESTICK_TEST_CACHE:-$REPO/target/real-cache}" >"$work/build.log" 2>&1 ||
    fail "kubestick build failed" "$work/build.log"
  size_control_plane "$(pick_accel "$out/optiplex-1.img")"
  date +%s >"$work/power-on"
  log "powering on ${NODES[*]} together (${CPUS} CPUs, ${MEMORY} MiB, $STICK stick each)"
  vm up "$out" "${NODES[@]}" --cpus "$CPUS" --memory "$MEMORY" --stick "$STICK" >"$work/up.log" 2>&1 ||
    fail "kubestick vm up failed" "$work/up.log"
fi
read_ports
power_on=$(cat "$work/power-on")


# --- drill 1: the cluster forms by itself ----------------------------------------------
# schedulable_control_plane NODE: labelled a control-plane node, no taint (a node loses the
# not-ready taint a few seconds after it turns Ready), not cordoned.
schedulable_control_plane() {
  kc get node "$1" -o json | python3 -c '
import json, sys
node = json.load(sys.stdin)
labelled = "node-role.kubernetes.io/control-plane" in node["metadata"].get("labels", {})
sys.exit(0 if labelled and not node["spec"].get("taints") and not node["spec"].get("unschedulable") else 1)'
}
all_ready() { [[ $(ready_nodes | grep -cxFf <(printf '%s\n' "${NODES[@]}")) == "$N" ]]; }
no_unready() { [[ -z $(unready_pods kube-system kube-flannel) ]]; }
drill_1() {
  if [[ -z $running ]] || ! all_ready; then
    log "drill 1: waiting for ${NODES[*]} to be Ready (bound ${FORM_BOUND}s)"
    until_true "$FORM_BOUND" "$N nodes Ready" all_ready || drill_fail 1 "${NODES[0]}" "${NODES[*]} were not Ready within ${FORM_BOUND}s"
  fi
  formed="$(($(now) - power_on))s"
  [[ -z $running ]] || formed+=" (or sooner: reused VMs)"
  log "drill 1: $N nodes Ready $formed after power-on"
  for n in "${NODES[@]}"; do
    until_true 300 "$n to be a schedulable control-plane node" schedulable_control_plane "$n" ||
      drill_fail 1 "$n" "$n is not a schedulable control-plane node: $(kc get node "$n" -o jsonpath='labels {.metadata.labels} taints {.spec.taints} unschedulable {.spec.unschedulable}')"
  done
  until_true "$STEP_BOUND" "etcd with $N healthy voting members" etcd_whole "${NODES[0]}" ||
    drill_fail 1 "${NODES[0]}" "etcd is not $N healthy voting members: $(etcd_members "${NODES[0]}" | tr '\n' ';')"
  until_true "$STEP_BOUND" "every kube-system and kube-flannel pod Running" no_unready ||
    drill_fail 1 "${NODES[0]}" "pods not running: $(unready_pods kube-system kube-flannel | tr '\n' ' ')"
  for component in etcd kube-apiserver kube-controller-manager kube-scheduler; do
    for n in "${NODES[@]}"; do
      kc -n kube-system get pod "$component-$n" >/dev/null || drill_fail 1 "$n" "no $component-$n static pod"
    done
  done
  attempts=$(bootstrap_attempts "${NODES[@]}")
  pass 1 "${formed%%s*}" "$N schedulable control-plane nodes Ready $formed after power-on; etcd: $N healthy voters; every kube-system and kube-flannel pod Running; kubeadm $attempts"
}
# bootstrap_attempts NODE...: how many attempts each node's bootstrap took (its done marker
# says), and the phase retries in all: "1 attempt each (optiplex-1..3), 0 phase retries".
bootstrap_attempts() {
  local n line a r tries=() retries=0 all_one=1
  for n in "$@"; do
    line=$(ssh_node "$n" cat /var/lib/kubestick/bootstrap.done 2>/dev/null) || line=
    if [[ $line =~ \(attempt\ ([0-9]+),\ ([0-9]+)\ phase\ retries\) ]]; then
      a=${BASH_REMATCH[1]} r=${BASH_REMATCH[2]}
    else
      a='?' r=0
    fi
    [[ $a == 1 ]] || all_one=
    tries+=("$n $a")
    retries=$((retries + r))
  done
  if [[ -n $all_one ]]; then
    printf '1 attempt on each of %s nodes, %s phase retries' "$#" "$retries"
  else
    local list
    list=$(printf '%s, ' "${tries[@]}")
    printf 'attempts %s, %s phase retries' "${list%, }" "$retries"
  fi
}

# --- drill 2: pod networking -------------------------------------------------------------
# Drill 2's pods: one per Ready node of the rehearsal (the late worker too, once it joined).
net_ready() {
  [[ $(kc -n "$NS" get pods -l app=net -o jsonpath='{.items[*].status.containerStatuses[*].ready}' | grep -o true | wc -l) == "${#net[@]}" ]]
}
# dial NODE HOST PORT: from NODE's agnhost pod (asked by NODE's host, over the bridge) an
# HTTP request to HOST:PORT; prints the name of the pod that answered.
dial() {
  ssh_node "$1" "curl -sf --max-time 20 'http://${pod_ip[$1]}:8080/dial?request=hostname&protocol=http&host=$2&port=$3&tries=3'" |
    python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin).get("responses") or []))'
}
declare -A pod_ip=()
default_sa() { kc -n "$NS" get serviceaccount default >/dev/null 2>&1; }
drill_2() {
  start=$(now)
  mapfile -t net < <(ready_nodes | grep -xFf <(printf '%s\n' "${NODES[@]}" "$WORKER"))
  # A new namespace's default service account is made by the controller-manager a moment
  # later, and a pod created before it is refused: the namespace first, then the pods.
  printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n' "$NS" | kc apply -f - >/dev/null ||
    drill_fail 2 "${NODES[0]}" "could not create the namespace $NS"
  until_true 300 "the default service account of $NS" default_sa ||
    drill_fail 2 "${NODES[0]}" "the namespace $NS got no default service account"
  {
    for n in "${net[@]}"; do
      cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: net-$n, namespace: $NS, labels: {app: net}}
spec:
  nodeName: $n
  containers:
    - name: netexec
      image: $agnhost
      imagePullPolicy: Never
      args: [netexec, --http-port=8080]
      readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 5}
EOF
    done
    cat <<EOF
---
apiVersion: v1
kind: Service
metadata: {name: net, namespace: $NS}
spec:
  selector: {app: net}
  ports: [{port: 80, targetPort: 8080}]
EOF
  } | kc apply -f - >/dev/null || drill_fail 2 optiplex-1 "could not create the agnhost pods and Service"
  until_true "$STEP_BOUND" "the agnhost pods" net_ready || drill_fail 2 "${net[0]}" "the agnhost pods are not ready: $(kc -n "$NS" get pods -o wide 2>&1)"
  for n in "${net[@]}"; do pod_ip[$n]=$(kc -n "$NS" get pod "net-$n" -o jsonpath='{.status.podIP}'); done
  cluster_ip=$(kc -n "$NS" get service net -o jsonpath='{.spec.clusterIP}')
  for n in "${net[@]}"; do
    for other in "${net[@]}"; do
      [[ $other == "$n" ]] && continue
      answer=$(dial "$n" "${pod_ip[$other]}" 8080) || answer=
      [[ $answer == *"net-$other"* ]] ||
        drill_fail 2 "$n" "net-$n (${pod_ip[$n]}) did not reach net-$other (${pod_ip[$other]}) over flannel: '$answer'"
    done
    answer=$(ssh_node "$n" curl -sf --max-time 20 "http://$cluster_ip/hostname") || answer=
    [[ " ${net[*]/#/net-} " == *" $answer "* ]] || drill_fail 2 "$n" "the ClusterIP $cluster_ip did not answer from $n's host: '$answer'"
    answer=$(dial "$n" "net.$NS.svc.cluster.local" 80) || answer=
    [[ $answer == *net-optiplex-* ]] || drill_fail 2 "$n" "net.$NS.svc.cluster.local did not resolve and answer inside net-$n: '$answer'"
  done
  pass 2 "$(($(now) - start))" "agnhost on ${net[*]}: each pod reached the others over flannel; the ClusterIP $cluster_ip answered from every node; net.$NS.svc.cluster.local resolved in every pod"
}

# --- drill 3: the VIP holder loses power -------------------------------------------------
two_healthy() { [[ $(etcdctl "$1" endpoint health --cluster 2>&1 | grep -c 'is healthy') == 2 ]]; }
drill_3() {
  start=$(now)
  holder=$(vip_holder)
  [[ -n $holder ]] || drill_fail 3 optiplex-1 "vm status names no VIP holder"
  others=()
  for n in "${NODES[@]}"; do [[ $n != "$holder" ]] && others+=("$n"); done
  old_id=$(boot_id "$holder")
  log "drill 3: $holder holds the API VIP; cutting its power"
  vm stop "$holder" -o "$out" >/dev/null
  cut=$(date +%s.%N)
  until kc --request-timeout=3s get --raw /readyz >/dev/null 2>&1; do
    awk -v c="$cut" -v n="$(date +%s.%N)" -v b="$FAILOVER_BOUND" 'BEGIN { exit !(n - c > b) }' &&
      drill_fail 3 "${others[0]}" "kubectl through the VIP did not answer within ${FAILOVER_BOUND}s after $holder lost power"
    sleep 0.5
  done
  failover=$(awk -v c="$cut" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - c }')
  verdict=met
  awk -v f="$failover" -v t="$FAILOVER_TARGET" 'BEGIN { exit !(f <= t) }' || verdict=MISSED
  log "drill 3: kubectl through the VIP answered again ${failover}s after the power cut (target ${FAILOVER_TARGET}s: $verdict), now from $(vip_holder)"
  # Quorum: two of three members are healthy, and a write goes through.
  until_true 300 "two healthy etcd members" two_healthy "${others[0]}" || drill_fail 3 "${others[0]}" "etcd did not keep two healthy members"
  kc -n default create configmap "kubestick-drill-written-without-$holder-$(now)" >/dev/null ||
    drill_fail 3 "${others[0]}" "a write through the API failed while $holder was off: etcd lost quorum"
  log "drill 3: etcd kept quorum (2 healthy members, a write went through); powering $holder on again"
  power_on_again "$holder"
  until_true "$STEP_BOUND" "$holder Ready again" back_ready "$holder" "$old_id" ||
    drill_fail 3 "$holder" "$holder was not Ready again after power came back"
  until_true "$STEP_BOUND" "etcd whole again" etcd_whole "${others[0]}" ||
    drill_fail 3 "$holder" "etcd is not 3 healthy members after $holder came back: $(etcd_members "${others[0]}" | tr '\n' ';')"
  pass 3 "$(($(now) - start))" "the VIP answered ${failover}s after $holder lost power (target ${FAILOVER_TARGET}s: $verdict); quorum kept; $holder back Ready with a healthy etcd member"
}

# --- drill 4: a reboot repeats no first-boot step -----------------------------------------
gone() { ! kill -0 "$1" 2>/dev/null; }
markers() { ssh_node "$1" 'cat /var/lib/kubestick/*.done'; }
drill_4() {
  start=$(now)
  n=${REAL_REBOOT:-${NODES[$((N - 1))]}}
  before=$(markers "$n") || drill_fail 4 "$n" "cannot read $n's done markers over SSH"
  old_id=$(boot_id "$n")
  pid=$(cat "$out/vm/$n/qemu.pid")
  # A clean shutdown, then power on: under TCG a warm reset (`systemctl reboot`) sometimes
  # hangs in the firmware, which is QEMU's problem, not the node's.
  log "drill 4: rebooting $n (systemctl poweroff, then power on)"
  ssh_node "$n" sudo systemctl poweroff || true
  until_true 600 "$n to power off" gone "$pid" || drill_fail 4 "$n" "$n did not power off"
  power_on_again "$n"
  until_true "$STEP_BOUND" "$n Ready again" back_ready "$n" "$old_id" || drill_fail 4 "$n" "$n was not Ready again after the reboot"
  after=$(markers "$n") || drill_fail 4 "$n" "cannot read $n's done markers after the reboot"
  [[ $after == "$before" ]] || drill_fail 4 "$n" "done markers changed across the reboot: $(diff <(echo "$before") <(echo "$after") || true)"
  journal=$(ssh_node "$n" sudo journalctl -b --no-pager -o cat -u kubestick-bootstrap.service -u kubestick-images.service)
  if grep -q 'running: kubeadm' <<<"$journal"; then drill_fail 4 "$n" "a first-boot step ran again: $journal"; fi
  grep -q 'unmet condition' <<<"$(ssh_node "$n" sudo journalctl -b --no-pager -u kubestick-bootstrap.service)" ||
    drill_fail 4 "$n" "the journal does not show kubestick-bootstrap skipped by its condition after the reboot"
  pass 4 "$(($(now) - start))" "$n rebooted, ran no first-boot step again (done markers unchanged, bootstrap skipped) and is Ready"
}

# --- drill 5: a late worker joins ---------------------------------------------------------
drill_5() {
  start=$(now)
  log "drill 5: powering on $WORKER, a worker, after the cluster formed"
  power_on_again "$WORKER"
  until_true "$STEP_BOUND" "$WORKER Ready" is_ready "$WORKER" || drill_fail 5 "$WORKER" "$WORKER did not join and become Ready"
  labels=$(kc get node "$WORKER" -o jsonpath='{.metadata.labels}')
  [[ $labels != *'"node-role.kubernetes.io/control-plane"'* ]] || drill_fail 5 "$WORKER" "$WORKER joined as a control-plane node"
  [[ $(etcd_members "${NODES[0]}" | wc -l) == "$N" ]] || drill_fail 5 "$WORKER" "the worker changed etcd's membership"
  pass 5 "$(($(now) - start))" "$WORKER, powered on after the cluster formed, joined as a worker and is Ready"
}

# --- drill 6: re-flashed sticks replace their stale etcd members --------------------------
drill_6() {
  for n in optiplex-2 optiplex-1; do
    start=$(now)
    old_member=$(etcd_members optiplex-3 | awk -v n="$n" '$1 == n { print $2 }')
    old_id=$(boot_id "$n")
    log "drill 6: re-flashing $n's stick (its etcd member was $old_member)"
    vm stop "$n" -o "$out" >/dev/null
    power_on_again "$n" --reflash
    until_true "$STEP_BOUND" "re-flashed $n Ready" back_ready "$n" "$old_id" ||
      drill_fail 6 "$n" "the re-flashed $n was not Ready again"
    until_true "$STEP_BOUND" "etcd whole again" etcd_whole optiplex-3 ||
      drill_fail 6 "$n" "etcd is not 3 healthy members after $n was re-flashed: $(etcd_members optiplex-3 | tr '\n' ';')"
    new_member=$(etcd_members optiplex-3 | awk -v n="$n" '$1 == n { print $2 }')
    [[ -n $new_member && $new_member != "$old_member" ]] ||
      drill_fail 6 "$n" "$n's etcd member was not replaced (before $old_member, now '$new_member')"
    done_line=$(ssh_node "$n" cat /var/lib/kubestick/bootstrap.done)
    [[ $done_line == *"joined the cluster"* ]] || drill_fail 6 "$n" "the re-flashed $n did not join the running cluster: $done_line"
    pass "6 ($n)" "$(($(now) - start))" "re-flashed $n replaced etcd member $old_member with $new_member, is Ready; etcd has exactly 3 members"
  done
}

# --- drill 7: a whole-house power cut -------------------------------------------------------
started_nodes() {
  local n
  for n in "${NODES[@]}" "$WORKER"; do
    [[ -f $out/vm/$n/qemu.pid ]] && kill -0 "$(cat "$out/vm/$n/qemu.pid")" 2>/dev/null && echo "$n"
  done
  return 0
}
# no_init_again NODE: its first-boot steps kept their done markers and the journal shows
# bootstrap skipped by its condition, kubeadm never run.
no_init_again() {
  local journal
  journal=$(ssh_node "$1" sudo journalctl -b --no-pager -u kubestick-bootstrap.service) || return 1
  ! grep -q 'running: kubeadm' <<<"$journal" && grep -q 'unmet condition' <<<"$journal"
}
declare -A cut_before=() cut_boot=()
cut_nodes=()
every_back() {
  local n
  for n in "${cut_nodes[@]}"; do back_ready "$n" "${cut_boot[$n]}" || return 1; done
}
drill_7() {
  local pause=${REAL_POWER_PAUSE:-60} n first='' back cut i
  mapfile -t cut_nodes < <(started_nodes)
  local all=("${cut_nodes[@]}")
  for n in "${all[@]}"; do
    cut_before[$n]=$(markers "$n") || drill_fail 7 "$n" "cannot read $n's done markers over SSH"
    cut_boot[$n]=$(boot_id "$n")
  done
  log "drill 7: power cut: ${all[*]} lose power at once"
  for n in "${all[@]}"; do vm stop "$n" -o "$out" >/dev/null & done
  wait
  cut=$(now)
  sleep 10
  # Back in the reverse order, minutes apart, as breakers and slow power supplies do.
  for ((i = ${#all[@]} - 1; i >= 0; i--)); do
    n=${all[$i]}
    log "drill 7: power back on $n"
    [[ -n $first ]] || first=$(now)
    power_on_again "$n"
    ((i == 0)) || sleep "$pause"
  done
  until_true "$STEP_BOUND" "${all[*]} Ready again" every_back ||
    drill_fail 7 "${all[0]}" "not every node was Ready again after the power cut: $(ready_nodes | tr '\n' ' ')"
  back=$(($(now) - first))
  until_true "$STEP_BOUND" "etcd whole again" etcd_whole "${NODES[0]}" ||
    drill_fail 7 "${NODES[0]}" "etcd is not whole after the power cut: $(etcd_members "${NODES[0]}" | tr '\n' ';')"
  until_true "$STEP_BOUND" "every kube-system and kube-flannel pod Running" no_unready ||
    drill_fail 7 "${NODES[0]}" "pods not running after the power cut: $(unready_pods kube-system kube-flannel | tr '\n' ' ')"
  for n in "${all[@]}"; do
    [[ $(markers "$n") == "${cut_before[$n]}" ]] || drill_fail 7 "$n" "$n's done markers changed across the power cut"
    no_init_again "$n" || drill_fail 7 "$n" "a first-boot step ran again on $n after the power cut"
  done
  pass 7 "$(($(now) - cut))" "${all[*]} lost power together, came back in reverse order ${pause}s apart; all Ready ${back}s after the first power-on; etcd whole; no first-boot step ran again"
}

# --- drill 8: a year later ------------------------------------------------------------------
# The nodes' clocks run ahead of the host's, so the host's kubectl would refuse their new
# certificates as not yet valid: everything is checked from inside, with the node's own
# (renewed) admin.conf.
# renewed NODE: the API server's certificate is good for another year by the node's clock
# (whatever the status line says: a renewal whose wait for the API ran out is checked again
# by the next run, which then reports "valid until").
renewed() {
  local end
  end=$(ssh_node "$1" sudo openssl x509 -noout -enddate -in /etc/kubernetes/pki/apiserver.crt 2>/dev/null) || return 1
  (($(date -u -d "${end#notAfter=}" +%s) - $(ssh_node "$1" date -u +%s) >= 360 * 86400))
}
# back_ready_inside FROM NODE OLD_BOOT_ID: back_ready read through FROM's admin.conf (the
# host's clock is a year behind the certificates).
back_ready_inside() { new_boot_ready "$3" kin "$1" get node "$2"; }
readyz_inside() { [[ $(kin "$1" get --raw /readyz 2>/dev/null) == ok ]]; }
etcd_healthy_inside() {
  kin "$1" -n kube-system exec "etcd-$2" -- etcdctl --endpoints=https://127.0.0.1:2379 \
    --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
    --key=/etc/kubernetes/pki/etcd/healthcheck-client.key --command-timeout=15s endpoint health --cluster 2>&1 |
    grep -c 'is healthy' | grep -qx "$N"
}
drill_8() {
  local days=${REAL_CLOCK_AHEAD:-400} n start vip vip_end node_now left status pid rest back
  local -A old_boot
  start=$(now)
  mapfile -t rest < <(started_nodes)
  for n in "${rest[@]}"; do old_boot[$n]=$(boot_id "$n"); done
  log "drill 8: shutting ${rest[*]} down; the control-plane nodes come back ${days} days later"
  for n in "${rest[@]}"; do
    pid=$(cat "$out/vm/$n/qemu.pid")
    ssh_node "$n" sudo systemctl poweroff || true
    until_true 600 "$n to power off" gone "$pid" || drill_fail 8 "$n" "$n did not power off"
  done
  # The worker too, when it was running: its kubelet's client certificate has expired with
  # the rest, and it has no CA to renew from.
  back=("${NODES[@]}")
  for n in "${rest[@]}"; do [[ $n != "$WORKER" ]] || back+=("$WORKER"); done
  for n in "${back[@]}"; do power_on_again "$n" --clock-ahead "$days"; done
  for n in "${NODES[@]}"; do
    until_true "$STEP_BOUND" "$n to renew its certificates by itself" renewed "$n" ||
      drill_fail 8 "$n" "$n did not renew its certificates: $(ssh_node "$n" sudo journalctl --no-pager -o cat -u kubestick-certs.service 2>&1 | tail -n 15)"
  done
  for n in "${back[@]}"; do
    until_true "$STEP_BOUND" "$n Ready after its new boot (seen from inside)" back_ready_inside "${NODES[0]}" "$n" "${old_boot[$n]:-}" ||
      drill_fail 8 "$n" "$n is not Ready $days days later"
  done
  until_true "$STEP_BOUND" "etcd healthy (seen from inside)" etcd_healthy_inside "${NODES[0]}" "${NODES[0]}" ||
    drill_fail 8 "${NODES[0]}" "etcd is not healthy $days days later"
  # The API through the VIP (the server admin.conf names), from a node: it answers, with a
  # certificate valid for another year. Waited for, not asked once: an API server the
  # renewal restarted reports not-ready until its RBAC bootstrap hook is done, which on a
  # slow node can outlast the kubelet's first Ready.
  vip=$(awk -F'"' '/^api_vip/ { print $2 }' "$work/cluster.toml")
  until_true "$STEP_BOUND" "/readyz through the VIP (seen from inside)" readyz_inside "${NODES[0]}" ||
    drill_fail 8 "${NODES[0]}" "the API did not answer through the VIP $days days later: $(kin "${NODES[0]}" get --raw '/readyz?verbose' 2>&1 | grep -v '^\[+\]')"
  vip_end=$(ssh_node "${NODES[0]}" "echo | openssl s_client -connect $vip:6443 2>/dev/null | openssl x509 -noout -enddate") ||
    drill_fail 8 "${NODES[0]}" "no certificate from the API at $vip:6443"
  vip_end=${vip_end#notAfter=}
  node_now=$(ssh_node "${NODES[0]}" date -u +%s)
  left=$((($(date -u -d "$vip_end" +%s) - node_now) / 86400))
  ((left >= 360)) || drill_fail 8 "${NODES[0]}" "the API's certificate through the VIP ends $vip_end, $left days after the node's clock"
  status=$(ssh_node "${NODES[0]}" sudo cat /var/lib/kubestick/certs.status)
  pass 8 "$(($(now) - start))" "${back[*]} started ${days} days later: the control plane renewed by itself ($status); the API through the VIP answers with a certificate valid $left more days; etcd healthy; all Ready"
}

# --- drill 9: calm, as a number ----------------------------------------------------------
# The formed cluster left alone for REAL_CALM_SECONDS (1800): restarts of the control-plane
# containers, etcd leader changes, /readyz through the VIP from the host every 5 s, and
# (observe.py, over the same window) each node's CPU by process, its writes to the stick
# per day and etcd's WAL fsync p99. Figures to report, not assertions that could fail by
# chance; the drill fails only if the cluster did not stay whole (a bound).
control_plane_restarts() {
  kc -n kube-system get pods -l tier=control-plane \
    -o jsonpath='{range .items[*]}{range .status.containerStatuses[*]}{.restartCount}{"\n"}{end}{end}' |
    awk '{ s += $1 } END { print s + 0 }'
}
drill_9() {
  local seconds=${REAL_CALM_SECONDS:-1800} start before after polls=0 failed=0 end observe_pid report
  start=$(now)
  before=$(control_plane_restarts)
  log "drill 9: watching the idle cluster for ${seconds}s (restarts, leader changes, /readyz through the VIP, CPU, writes)"
  python3 "$QT_DIR/real/observe.py" --out "$out" --key "$work/id" --kubestick "$KUBESTICK" --seconds "$seconds" \
    --json "$work/calm.json" "${NODES[@]}" >"$work/calm.txt" 2>&1 &
  observe_pid=$!
  end=$((start + seconds))
  while (($(now) < end)); do
    polls=$((polls + 1))
    kc --request-timeout=5s get --raw /readyz >/dev/null 2>&1 || failed=$((failed + 1))
    sleep 5
  done
  wait "$observe_pid" || drill_fail 9 "${NODES[0]}" "observe.py failed: $(tail -n 5 "$work/calm.txt")"
  cat "$work/calm.txt" >&2
  after=$(control_plane_restarts)
  report=$(python3 - "$work/calm.json" <<'EOF'
import json, sys
nodes = json.load(open(sys.argv[1]))
leader = sum(n["etcd"].get("leader_changes", 0) for n in nodes if n["etcd"]) if nodes else 0
cores = [n["qemu_host_cores"] for n in nodes]
gib = [d["gib_per_day"] for n in nodes for dev, d in n["disk"].items() if dev == "vda"]
p99 = [n["etcd"]["wal_fsync_p99_s"] for n in nodes if n["etcd"] and n["etcd"]["wal_fsync_p99_s"] is not None]
print(f"{leader:.0f} etcd leader changes; idle QEMU {sum(cores):.2f} host cores for {len(cores)} nodes "
      f"({', '.join(f'{c:.2f}' for c in cores)}); stick writes {max(gib):.2f} GiB/day per node at most "
      f"(goal 1); etcd WAL fsync p99 <= {max(p99) * 1000:g} ms" if gib and p99 else f"{leader:.0f} etcd leader changes")
EOF
  )
  until_true "$STEP_BOUND" "$N nodes Ready" all_ready || drill_fail 9 "${NODES[0]}" "not every node was Ready after ${seconds}s of idle"
  until_true "$STEP_BOUND" "etcd whole" etcd_whole "${NODES[0]}" || drill_fail 9 "${NODES[0]}" "etcd is not whole after ${seconds}s of idle"
  calm="$((after - before)) control-plane restarts, $report, $failed of $polls /readyz through the VIP failed"
  pass 9 "$(($(now) - start))" "calm for ${seconds}s: $calm"
}

for d in "${order[@]}"; do "drill_$d"; done
