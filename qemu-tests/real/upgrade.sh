#!/usr/bin/env bash
# The upgrade rehearsal (`make real-upgrade`): Kubernetes moved to its next release by
# re-flashing sticks, with the real components of both releases (build.sh and
# `build.sh 1.35.8`, served by mirror.sh with REAL_RELEASES), checked with the real kubectl:
#   u1  a cluster formed on REAL_UPGRADE_FROM (1.35.8): its control-plane nodes Ready, every
#       kubelet on that release; a workload (agnhost behind a Service) answers
#   u2  the same cluster.toml built again with REAL_UPGRADE_TO (1.36.4): `kubestick build`
#       says it is a minor upgrade and `kubestick diff` names the release change; then each
#       control-plane node in turn gets a stick of the new release (a node that ran is
#       stopped and re-flashed; one that never ran is powered on with it) and must be Ready
#       on the new release with its control plane of the new release and etcd whole, while
#       the host asks the API through the VIP every second and the workload every 5 s
#   u3  the end state: the ClusterConfiguration names the new release; kube-proxy and
#       CoreDNS run the new release's images once every node does, and stay on the old one
#       (from the images every stick carries of the previous release) while a node runs it;
#       no image was pulled
#   u4  a node whose stick carries the old release, booted after the upgrade, is refused:
#       REFUSED on its console, no kubeadm run, neither a Node nor an etcd member
# Three control-plane VMs do not fit under TCG on this project's 2-core machines (see
# drills.sh), and with two a re-flash would leave etcd without quorum: here the cluster
# forms on optiplex-1 alone and optiplex-2 joins with the new release, so u2 is the first
# node of the new release moving the cluster to it, and u3 finds the add-ons rightly left
# on the old release while optiplex-1 runs it. With KVM or REAL_TCG_CORES_FOR_THREE (6) cores, all
# three form on the old release and are re-flashed one at a time (REAL_NODES decides
# instead). The run ends with one summary line.
set -euo pipefail
# shellcheck source=qemu-tests/real/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

FROM=${REAL_UPGRADE_FROM:-1.35.8}
TO=${REAL_UPGRADE_TO:-1.36.4}
NS=kubestick-upgrade
api_log=$work/api-polls
app_log=$work/app-polls
pollers=()

finish() {
  local status=$?
  local p
  for p in "${pollers[@]}"; do kill "$p" 2>/dev/null || true; done
  # The polls, beside the serial logs a failed run keeps.
  if ((status != 0)); then
    mkdir -p "${work}-logs"
    cp "$api_log" "$app_log" "${work}-logs/" 2>/dev/null || true
  fi
  if ((status != 0)) && [[ " ${summary[*]} " != *" FAIL"* ]]; then
    summary+=("stopped by an unexpected error (exit status $status; see above)")
  fi
  {
    printf 'real-upgrade %s -> %s:' "$FROM" "$TO"
    printf ' %s;' "${summary[@]}"
    [[ ! -s $api_log ]] || printf ' API through the VIP: %s' "$(poll_report "$api_log" 1)"
    [[ ! -s $app_log ]] || printf '; workload: %s' "$(poll_report "$app_log" 5)"
    printf '\n'
  } >&2
  keep_logs_and_clean "$status"
}
trap finish EXIT

# poll_report FILE PERIOD: "N of M failed, longest outage S s" from lines "<epoch> ok|fail".
poll_report() {
  awk -v period="$2" '
    { n++ }
    $2 == "fail" { failed++; if (!start) start = $1; last = $1 }
    $2 == "ok" && start { gap = last - start + period; if (gap > longest) longest = gap; start = 0 }
    END {
      if (start) { gap = last - start + period; if (gap > longest) longest = gap }
      printf "%d of %d asked failed, longest outage %ds", failed, n, longest
    }' "$1"
}

# --- both releases' components, the two builds ---------------------------------------------
REAL_RELEASES="$TO $FROM" real_components

# build RELEASE OUT: the rehearsal cluster's images of RELEASE (one state directory, so one
# cluster, whose release record `kubestick build` keeps).
build() {
  sed "s/^kubernetes_version = .*/kubernetes_version = \"$1\"/" "$work/cluster.toml.in" >"$work/cluster.toml"
  "$KUBESTICK" build "$work/cluster.toml" -o "$2" --lock "$mirror/artifacts.lock" --mirror "$mirror/mirror" \
    --cache "${KUBESTICK_TEST_CACHE:-$REPO/target/real-cache}" >"$work/build-$1.log" 2>&1 ||
    fail "kubestick build of $1 failed" "$work/build-$1.log"
  cat "$work/build-$1.log" >>"$work/build.log"
}
rm -rf "$out"
[[ -f $work/id ]] || ssh-keygen -q -t ed25519 -N '' -C kubestick-real -f "$work/id"
with_ssh_key "$QT_DIR/real/cluster.toml" "$work/cluster.toml.in" "$work/id.pub"
log "building the rehearsal images of $FROM and of $TO from the real components ($mirror)"
build "$FROM" "$out"
build "$TO" "$work/new"

accel=$(pick_accel "$out/optiplex-1.img")
if [[ -n ${REAL_NODES:-} ]]; then
  read -ra NODES <<<"$REAL_NODES"
elif [[ $accel == kvm ]] || (($(nproc) >= ${REAL_TCG_CORES_FOR_THREE:-6})); then
  NODES=(optiplex-1 optiplex-2 optiplex-3)
else
  NODES=(optiplex-1)
  log "notice: TCG on $(nproc) host cores holds two real control-plane nodes at most: the cluster forms on optiplex-1 and optiplex-2 joins with $TO"
fi
N=${#NODES[@]}
# The control-plane nodes given the new release, in order: the formed ones re-flashed (the
# init node last), or the node that joins with it.
if ((N >= 3)); then upgrade=("${NODES[@]:1}" "${NODES[0]}"); else upgrade=(optiplex-2); fi
# The node booted with the old release after the upgrade: one that never ran.
late=optiplex-3
((N < 3)) || late=

# kubelet_release NODE: the kubelet version NODE reports, without the v.
kubelet_release() { kc get node "$1" -o jsonpath='{.status.nodeInfo.kubeletVersion}' 2>/dev/null | sed 's/^v//'; }
ready_on() { is_ready "$1" && [[ $(kubelet_release "$1") == "$2" ]]; }
all_ready_on() {
  local n
  for n in "${NODES[@]}"; do ready_on "$n" "$1" || return 1; done
}
image_of() { kc -n kube-system get "$1" -o jsonpath='{.spec.template.spec.containers[0].image}{.spec.containers[0].image}'; }
proxy_on() { [[ $(image_of daemonset/kube-proxy) == *":v$1" ]]; }
# etcd_whole_of COUNT NODE: etcd_whole for COUNT members (N is read by etcd_whole).
etcd_whole_of() {
  local N=$1
  etcd_whole "$2"
}
cluster_release() {
  kc -n kube-system get configmap kubeadm-config -o jsonpath='{.data.ClusterConfiguration}' | sed -n 's/^kubernetesVersion: v//p'
}

# --- u1: formed on the old release ----------------------------------------------------------
start=$(now)
log "u1: powering on ${NODES[*]} with $FROM sticks (${CPUS} CPUs, ${MEMORY} MiB, $STICK stick each)"
vm up "$out" "${NODES[@]}" --cpus "$CPUS" --memory "$MEMORY" --stick "$STICK" >"$work/up.log" 2>&1 ||
  fail "kubestick vm up failed" "$work/up.log"
read_ports
until_true "$FORM_BOUND" "${NODES[*]} Ready on $FROM" all_ready_on "$FROM" ||
  drill_fail u1 "${NODES[0]}" "${NODES[*]} were not Ready with kubelet $FROM within ${FORM_BOUND}s"
until_true "$STEP_BOUND" "etcd with $N healthy voting members" etcd_whole "${NODES[0]}" ||
  drill_fail u1 "${NODES[0]}" "etcd is not $N healthy voting members: $(etcd_members "${NODES[0]}" | tr '\n' ';')"
printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n' "$NS" | kc apply -f - >/dev/null
until_true 300 "the default service account of $NS" kc -n "$NS" get serviceaccount default
kc apply -f - >/dev/null <<EOF || drill_fail u1 "${NODES[0]}" "could not create the workload"
apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: $NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      nodeSelector: {kubernetes.io/hostname: ${NODES[0]}}
      containers:
        - name: netexec
          image: $agnhost
          imagePullPolicy: Never
          args: [netexec, --http-port=8080]
          readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 5}
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: $NS}
spec:
  selector: {app: app}
  ports: [{port: 80, targetPort: 8080}]
EOF
until_true "$STEP_BOUND" "the workload" kc -n "$NS" rollout status deployment/app --timeout=10s ||
  drill_fail u1 "${NODES[0]}" "the workload did not start: $(kc -n "$NS" get pods -o wide 2>&1)"
app_ip=$(kc -n "$NS" get service app -o jsonpath='{.spec.clusterIP}')
# The Service answers once kube-proxy has written its rules, a moment after the pod is ready.
app_answers() { ssh_node "${NODES[0]}" curl -sf --max-time 10 "http://$app_ip/hostname" >/dev/null; }
until_true "$STEP_BOUND" "the workload at $app_ip" app_answers ||
  drill_fail u1 "${NODES[0]}" "the workload did not answer at $app_ip"
pass u1 "$(($(now) - start))" "${NODES[*]} Ready on $FROM; etcd $N healthy voters; the workload answers at $app_ip"

# The API through the VIP every second, the workload (from the first node's host, which keeps
# running in the reduced rehearsal) every 5 s, for the whole upgrade.
(while :; do
  if "$KUBECTL" --kubeconfig "$out/vm/kubeconfig" --request-timeout=3s get --raw /readyz >/dev/null 2>&1; then r=ok; else r=fail; fi
  echo "$(now) $r" >>"$api_log"
  sleep 1
done) &
pollers+=($!)
(while :; do
  if ssh_node "${NODES[0]}" curl -sf --max-time 4 "http://$app_ip/hostname" >/dev/null 2>&1; then r=ok; else r=fail; fi
  echo "$(now) $r" >>"$app_log"
  sleep 5
done) &
pollers+=($!)

# --- u2: one stick after the other ----------------------------------------------------------
start=$(now)
grep -q "note: Kubernetes $FROM → $TO, a minor upgrade" "$work/build-$TO.log" ||
  drill_fail u2 "${NODES[0]}" "kubestick build of $TO did not say it is a minor upgrade from $FROM: $(grep -a note "$work/build-$TO.log")"
diff_text=$("$KUBESTICK" diff "$out/optiplex-1.cdx.json" "$work/new/optiplex-1.cdx.json" || true)
grep -q "Kubernetes $FROM → $TO, a minor upgrade" <<<"$diff_text" ||
  drill_fail u2 "${NODES[0]}" "kubestick diff did not name the release change: $(tail -n 3 <<<"$diff_text")"
for n in "${upgrade[@]}"; do
  step_start=$(now)
  # A rename: the stick written at once, and no second copy of a 1 GB image on the disk.
  mv "$work/new/$n.img" "$out/$n.img"
  if [[ -f $out/vm/$n/qemu.pid ]] && kill -0 "$(cat "$out/vm/$n/qemu.pid")" 2>/dev/null; then
    log "u2: re-flashing $n's stick with $TO"
    vm stop "$n" -o "$out" >/dev/null
    power_on_again "$n" --reflash
  else
    log "u2: powering on $n with a $TO stick"
    power_on_again "$n"
  fi
  until_true "$FORM_BOUND" "$n Ready on $TO" ready_on "$n" "$TO" ||
    drill_fail u2 "$n" "$n was not Ready with kubelet $TO within ${FORM_BOUND}s"
  # Ready comes before the bootstrap's last steps (its own API server answering, the add-ons).
  until_true "$STEP_BOUND" "$n's bootstrap to finish" ssh_node "$n" test -e /var/lib/kubestick/bootstrap.done ||
    drill_fail u2 "$n" "$n's bootstrap did not finish"
  for c in kube-apiserver etcd; do
    until_true "$STEP_BOUND" "$c-$n running" kc -n kube-system get pod "$c-$n" ||
      drill_fail u2 "$n" "no $c-$n static pod"
  done
  image=$(image_of "pod/kube-apiserver-$n")
  [[ $image == *":v$TO" ]] || drill_fail u2 "$n" "$n's API server runs $image, not $TO"
  members=$((N >= 3 ? N : 2))
  until_true "$STEP_BOUND" "etcd with $members healthy voting members" etcd_whole_of "$members" "$n" ||
    drill_fail u2 "$n" "etcd is not $members healthy voting members: $(etcd_members "$n" | tr '\n' ';')"
  pass "u2 ($n)" "$(($(now) - step_start))" "$n Ready on $TO, its API server $image, etcd $members healthy voters"
done

# --- u3: the end state -------------------------------------------------------------------
start=$(now)
[[ $(cluster_release) == "$TO" ]] || drill_fail u3 "${upgrade[0]}" "the ClusterConfiguration names $(cluster_release), not $TO"
proxy=$(image_of daemonset/kube-proxy)
dns=$(image_of deployment/coredns)
if ((N >= 3)); then
  until_true "$STEP_BOUND" "kube-proxy of $TO" proxy_on "$TO" ||
    drill_fail u3 "${upgrade[-1]}" "kube-proxy still runs $(image_of daemonset/kube-proxy) after every control-plane node runs $TO"
  proxy=$(image_of daemonset/kube-proxy)
  dns=$(image_of deployment/coredns)
  addons="kube-proxy $proxy, CoreDNS $dns"
else
  [[ $proxy == *":v$FROM" ]] || drill_fail u3 "${upgrade[0]}" "kube-proxy moved to $proxy while ${NODES[0]} runs the $FROM API server"
  ssh_node "${upgrade[0]}" sudo journalctl -b --no-pager -u kubestick-bootstrap.service |
    grep -q "kube-proxy and CoreDNS stay on v$FROM until every node runs $TO (not yet: ${NODES[0]} )" ||
    drill_fail u3 "${upgrade[0]}" "${upgrade[0]}'s bootstrap did not say the add-ons wait for ${NODES[0]}"
  addons="kube-proxy ($proxy) and CoreDNS ($dns) stay on $FROM while ${NODES[0]} runs it; ${upgrade[0]} runs them from the $FROM images its stick carries"
fi
pulls=$(kc get events -A --field-selector reason=Pulling -o name 2>/dev/null | wc -l)
((pulls == 0)) || drill_fail u3 "${upgrade[0]}" "$pulls image pulls: $(kc get events -A --field-selector reason=Pulling 2>&1 | tail -n 3)"
pass u3 "$(($(now) - start))" "ClusterConfiguration on $TO; $addons; no image pulled"

# --- u4: an old stick after the upgrade -----------------------------------------------------
if [[ -n $late ]]; then
  start=$(now)
  log "u4: powering on $late with a $FROM stick"
  power_on_again "$late"
  refused() { tr -d '\r' <"$out/vm/$late/serial.log" | grep -aq "kubestick-bootstrap: REFUSED: this stick carries Kubernetes $FROM, older than the cluster's $TO"; }
  until_true "$STEP_BOUND" "$late to refuse its stick" refused ||
    drill_fail u4 "$late" "$late did not refuse its $FROM stick"
  journal=$(ssh_node "$late" sudo journalctl -b --no-pager -u kubestick-bootstrap.service)
  ! grep -q 'running: kubeadm' <<<"$journal" || drill_fail u4 "$late" "$late ran kubeadm before refusing"
  ! kc get node "$late" >/dev/null 2>&1 || drill_fail u4 "$late" "$late registered a Node"
  ! etcd_members "${upgrade[0]}" | grep -q "^$late " || drill_fail u4 "$late" "$late is an etcd member"
  banner=$(ssh_node "$late" cat /run/kubestick/status)
  grep -q 'bootstrap  REFUSED' <<<"$banner" || drill_fail u4 "$late" "its status banner does not say REFUSED: $banner"
  pass u4 "$(($(now) - start))" "$late with a $FROM stick refused before kubeadm ran: not a Node, not an etcd member, REFUSED on its banner"
fi
