#!/usr/bin/env bash
# The rehearsal drills: the three-node cluster of qemu-tests/cluster.toml, built with the
# test-double artifacts, booted with `kubestick vm` (no root; nothing leaves 127.0.0.1),
# and checked the way a person would check real PCs:
#   1  every node boots; hostname, address and by-id disk name are what cluster.toml says;
#      every node reaches the other two
#   2  the API virtual IP answers; its holder loses power; the VIP answers from another
#      node within FAILOVER_BOUND seconds (default 60: a bound no loaded machine misses).
#      The failover time is measured and reported against FAILOVER_TARGET (default 2 s),
#      never asserted; FAILOVER_CUTS=N cuts the holder N times and reports the median
#      (`make bench`)
#   3  a node reboots: no first-boot step runs again
#   4  re-flashed sticks: a node whose SATA disk carries a ceph bluestore label keeps it;
#      a node whose disk carries an old partition table gets it cleared
#   5  late joiner: the third node is powered on after the first two finished; it joins
#   6  boot time to "bootstrap step reached" (and done) per node
# Usage: drills.sh [DRILL...]   (default: all). KEEP_WORK=1 keeps the VMs and files.
# Each failure prints the part of the node's serial log that explains it.
set -euo pipefail
# shellcheck source=qemu-tests/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

declare -A want=()
for d in "${@:-1 2 3 4 5 6}"; do
  for n in $d; do
    [[ $n =~ ^[1-6]$ ]] || { echo "usage: $0 [DRILL...] (drills are 1 to 6)" >&2; exit 2; }
    want[$n]=1
  done
done
wanted() { [[ -n ${want[$1]:-} ]]; }

NODES=(optiplex-1 optiplex-2 optiplex-3)
BOOT_TIMEOUT=${BOOT_TIMEOUT:-900}
FAILOVER_TARGET=${FAILOVER_TARGET:-2}
FAILOVER_BOUND=${FAILOVER_BOUND:-60}
work=$(mktemp -d "${TMPDIR:-/tmp}/kubestick-drills.XXXXXX")
out=$work/out
suite_start=$SECONDS

cleanup() {
  local status=$?
  if [[ -n ${KEEP_WORK:-} ]]; then
    log "kept $work (VMs still running: \`$KUBESTICK vm destroy -o $out\` removes them)"
    return
  fi
  # After a failure the logs stay (the disks and images go): each node's whole serial log.
  if ((status != 0)) && [[ -d $out/vm ]]; then
    mkdir -p "${work}-logs"
    for f in "$out"/vm/*/serial.log; do cp "$f" "${work}-logs/$(basename "$(dirname "$f")").serial.log"; done
    cp "$out/vm/hub.log" "$work/build.log" "$work/up.log" "${work}-logs/" 2>/dev/null || true
    log "serial logs of this run kept in ${work}-logs"
  fi
  "$KUBESTICK" vm destroy -o "$out" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

vm() { "$KUBESTICK" vm "$@"; }
serial_of() { echo "$out/vm/$1/serial.log"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# The serial log without colours and carriage returns: all of it, or since the last time
# kubestick vm powered the node on. Every reader here reads its input to the end: with
# pipefail, a reader that stops early (sed q, grep -q, grep -m1) fails the writer with
# SIGPIPE, and the pipeline with it, as soon as the log outgrows a pipe buffer.
clean_log() { tr -d '\r' <"$(serial_of "$1")" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g'; }
since_power_on() {
  clean_log "$1" | awk '/^\[kubestick vm\] power on:/ { n = 0 } { line[n++] = $0 } END { for (i = 0; i < n; i++) print line[i] }'
}
# first_line NODE REGEX: the first line since power-on matching REGEX.
first_line() {
  local text
  text=$(since_power_on "$1")
  grep -aE -m1 -- "$2" <<<"$text"
}

# drill_fail NODE MESSAGE: the message, then what the node said about its first-boot steps
# and the end of its serial log since it was powered on.
drill_fail() {
  local node=$1 msg=$2
  {
    printf 'FAIL: %s\n' "$msg"
    printf -- '--- %s: kubestick lines since power-on (%s) ---\n' "$node" "$(serial_of "$node")"
    since_power_on "$node" | grep -aE 'kubestick|Failed|FAILED|error' | tail -n 25 || true
    printf -- '--- %s: last lines ---\n' "$node"
    since_power_on "$node" | tail -n 15
  } >&2
  exit 1
}

# wait_node NODE REGEX TIMEOUT: the first line since power-on matching REGEX.
wait_node() {
  local node=$1 regex=$2 timeout=$3 start=$SECONDS line
  while ((SECONDS - start < timeout)); do
    if line=$(first_line "$node" "$regex"); then
      printf '%s\n' "$line"
      return 0
    fi
    sleep 1
  done
  return 1
}

# node_field NODE FIELD: what cluster.toml says of the node (ip, disk...), from the build's cluster.json.
node_field() {
  python3 -c 'import json,sys; print(next(x[sys.argv[3]] for x in json.load(open(sys.argv[1]))["nodes"] if x["name"] == sys.argv[2]))' \
    "$out/cluster.json" "$1" "$2"
}

api_port=

# api_probe: one request to the API virtual IP through the forward, checked against the
# cluster CA as a kubeconfig would; prints which node answered.
api_probe() {
  curl --silent --max-time "${1:-3}" --cacert "$work/ca.crt" --connect-to "10.77.0.10:6443:127.0.0.1:$api_port" \
    --dump-header - --output /dev/null https://10.77.0.10:6443/livez |
    tr -d '\r' | sed -n 's/^X-Kubestick-Double-Node: //Ip'
}

# --- the cluster: qemu-tests/cluster.toml with an SSH key made for this run --------------
log "building the rehearsal cluster with the test-double artifacts"
ssh-keygen -q -t ed25519 -N '' -C kubestick-drills -f "$work/id"
python3 "$QT_DIR/make-mirror.py" "$REPO" "$work/doubles"
with_ssh_key "$QT_DIR/cluster.toml" "$work/cluster.toml" "$work/id.pub"
"$KUBESTICK" build "$work/cluster.toml" -o "$out" --lock "$work/doubles/artifacts.lock" \
  --mirror "$work/doubles/mirror" --cache "${KUBESTICK_TEST_CACHE:-$REPO/target/qemu-tests-cache}" \
  >"$work/build.log" 2>&1 || fail "kubestick build failed" "$work/build.log"
grep certificate-authority-data "$out/admin.conf" | awk '{print $2}' | base64 -d >"$work/ca.crt"

# --- boot; time each node to its bootstrap step (drill 6) ---------------------------------
declare -A powered=() reached=() bootstrapped=()
first=("${NODES[@]}")
wanted 5 && first=(optiplex-1 optiplex-2)
log "powering on ${first[*]}"
for n in "${first[@]}"; do powered[$n]=$(now); done
vm up "$out" "${first[@]}" --cpus 1 --memory 1536 >"$work/up.log" 2>&1 || fail "kubestick vm up failed" "$work/up.log"
grep -h notice "$work/up.log" >&2 || true
eval "$(vm status -o "$out" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("api_port=%d" % s["api"]["host_port"])
for n in s["nodes"]:
    print("ssh_port[%s]=%d" % (n["name"], n["ssh_port"]))
')"

# bootstrapped NODE...: waits until each node's bootstrap step is done, noting when the step
# was reached (its unit started) and when it finished.
# "<step> done: <result>" is what counts: the result comes from the step's done marker; a
# bare "done" (its unit active, the marker not seen) has been printed just before it.
await_bootstrap() {
  local start=$SECONDS pending n line
  while true; do
    pending=()
    for n in "$@"; do
      if [[ -z ${reached[$n]:-} ]] && first_line "$n" 'Starting kubestick-bootstrap\.service' >/dev/null; then
        reached[$n]=$(now)
      fi
      if [[ -z ${bootstrapped[$n]:-} ]] && line=$(first_line "$n" 'kubestick: bootstrap +done:'); then
        bootstrapped[$n]=$(now)
        log "$n: ${line#*kubestick: } ($(elapsed "${powered[$n]}" "${bootstrapped[$n]}")s after power-on)"
      fi
      [[ -n ${bootstrapped[$n]:-} ]] || pending+=("$n")
    done
    ((${#pending[@]} == 0)) && return 0
    if ((SECONDS - start > BOOT_TIMEOUT)); then
      drill_fail "${pending[0]}" "${pending[*]} did not finish the bootstrap step within ${BOOT_TIMEOUT}s"
    fi
    sleep 1
  done
}
await_bootstrap "${first[@]}"

if wanted 5; then
  log "drill 5: optiplex-1 and optiplex-2 formed the cluster; powering on optiplex-3 now"
  powered[optiplex-3]=$(now)
  vm start optiplex-3 -o "$out" >>"$work/up.log" 2>&1 || fail "kubestick vm start optiplex-3 failed" "$work/up.log"
  await_bootstrap optiplex-3
  line=$(first_line optiplex-3 'kubestick: bootstrap +done:')
  [[ $line == *"joined the cluster"* ]] || drill_fail optiplex-3 "the late node did not join: $line"
  ssh_node optiplex-3 grep -q "'kubeadm join --config /etc/kubestick/kubeadm-join.yaml'" /var/log/kubestick-doubles.log ||
    drill_fail optiplex-3 "the late node's bootstrap step never ran kubeadm join"
  log "PASS drill 5: optiplex-3, powered on after the others finished, joined the cluster"
fi

# Drill 6's numbers, taken now: later drills power nodes off and on again.
accel=$(vm status -o "$out" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["accel"])')
first_boot_times=
for n in "${NODES[@]}"; do
  first_boot_times+=$(printf '  %-11s bootstrap step reached %6ss, done %6ss after power-on' "$n" \
    "$(elapsed "${powered[$n]}" "${reached[$n]}")" "$(elapsed "${powered[$n]}" "${bootstrapped[$n]}")")$'\n'
done

if wanted 1; then
  for n in "${NODES[@]}"; do
    ip=$(node_field "$n" ip)
    disk=$(node_field "$n" disk)
    report=$(wait_node "$n" 'kubestick: node=' "$BOOT_TIMEOUT") || drill_fail "$n" "$n printed no identity line"
    report=${report#*kubestick: }
    [[ $report == "node=$n "* ]] || drill_fail "$n" "hostname is not $n: $report"
    [[ $report == *" lan0=$ip/24 "* ]] || drill_fail "$n" "lan0 does not have $ip/24: $report"
    [[ " ${report#*disks=} " == *" ${disk##*/} "* ]] || drill_fail "$n" "the SATA disk is not $disk: $report"
    # The same, asked over SSH, plus the other two nodes answering from this one.
    [[ $(ssh_node "$n" hostname) == "$n" ]] || drill_fail "$n" "hostname over SSH is not $n"
    ssh_node "$n" test -b "$disk" || drill_fail "$n" "$disk is not a block device on $n"
    for other in "${NODES[@]}"; do
      [[ $other == "$n" ]] && continue
      oip=$(node_field "$other" ip)
      ssh_node "$n" sudo ping -c 2 -W 10 "$oip" >/dev/null || drill_fail "$n" "$n does not reach $other ($oip)"
    done
    # The status timer fires every 10 s for the node's life; its unit's lines would bury the console.
    if since_power_on "$n" | grep -aq 'kubestick-status\.service'; then
      drill_fail "$n" "systemd's lines about kubestick-status.service reach the console"
    fi
    log "$n: $report; reaches the other two"
  done
  log "PASS drill 1: hostnames, addresses and by-id disks as cluster.toml says; every node reaches the other two"
fi

# keepalived_ready NODE: keepalived on NODE has seen its API check succeed (rise 2) since
# the node last booted, and not fail since: it would take the VIP over at full priority.
keepalived_ready() {
  local last
  last=$(ssh_node "$1" sudo journalctl -b -u keepalived --no-pager -o cat 2>/dev/null |
    grep -aoE 'VRRP_Script\(check_apiserver\) (succeeded|failed)' | tail -n 1) || return 1
  [[ $last == *succeeded ]]
}

# await_vip_candidates NODE...: each node's own API answers and its keepalived counts it
# healthy, so a takeover by any of them is not held up by a check that has yet to pass.
await_vip_candidates() {
  local n start
  for n in "$@"; do
    start=$SECONDS
    until ssh_node "$n" curl -sfk --max-time 10 https://127.0.0.1:6443/livez >/dev/null && keepalived_ready "$n"; do
      ((SECONDS - start < BOOT_TIMEOUT)) ||
        drill_fail "$n" "keepalived on $n never counted its API healthy within ${BOOT_TIMEOUT}s, so it could not take the virtual IP over"
      sleep 2
    done
  done
}

# cut_holder: powers off the node answering at the API VIP, records when another node
# answers there (one request every 100 ms, each on its own connection) and checks that
# `vm status` names the new holder. Sets holder, new_holder and failover (seconds).
cut_holder() {
  local n deadline answer start st
  holder=
  start=$SECONDS
  until holder=$(api_probe 10) && [[ -n $holder ]]; do
    ((SECONDS - start < 120)) || drill_fail optiplex-1 "the API virtual IP does not answer through 127.0.0.1:$api_port"
    sleep 2
  done
  local others=()
  for n in "${NODES[@]}"; do [[ $n != "$holder" ]] && others+=("$n"); done
  await_vip_candidates "${others[@]}"
  log "drill 2: the API VIP answers from $holder; cutting its power"
  : >"$work/probes"
  local killed
  killed=$(now)
  vm stop "$holder" -o "$out" >/dev/null
  deadline=$(($(date +%s) + FAILOVER_BOUND))
  while (($(date +%s) < deadline)); do
    (
      node=$(api_probe 5) && [[ -n $node ]] && echo "$(now) $node" >>"$work/probes"
    ) &
    sleep 0.1
    if awk -v h="$holder" '$2 != h { found = 1 } END { exit !found }' "$work/probes"; then break; fi
  done
  wait
  answer=$(awk -v h="$holder" '$2 != h' "$work/probes" | sort -n | head -n 1)
  [[ -n $answer ]] ||
    drill_fail "${others[0]}" "no other node answered at the VIP within ${FAILOVER_BOUND}s after $holder lost power"
  new_holder=${answer#* }
  failover=$(elapsed "$killed" "${answer%% *}")
  failovers+=("$failover")
  # kubestick vm status learns the holder from the ARP keepalived sends when it takes over.
  start=$SECONDS
  until st=$(vm status -o "$out") && grep -q "VIP held by $new_holder" <<<"$st"; do
    ((SECONDS - start < 60)) || drill_fail "$new_holder" "vm status does not show $new_holder as the VIP holder: $st"
    sleep 1
  done
  log "drill 2: the VIP answered from $new_holder ${failover}s after $holder lost power (target ${FAILOVER_TARGET}s)"
}

# power_on_again NODE: boots NODE from the same stick after a power cut and waits until it
# is back in the cluster (identity line since power-on).
power_on_again() {
  powered[$1]=$(now)
  vm start "$1" -o "$out" >>"$work/up.log" 2>&1 || fail "kubestick vm start $1 failed" "$work/up.log"
  wait_node "$1" 'kubestick: node=' "$BOOT_TIMEOUT" >/dev/null ||
    drill_fail "$1" "$1 printed no identity line within ${BOOT_TIMEOUT}s of power-on"
}

if wanted 2; then
  failovers=()
  cuts=${FAILOVER_CUTS:-1}
  for ((cut = 1; cut <= cuts; cut++)); do
    ((cuts == 1)) || log "drill 2: cut $cut of $cuts"
    cut_holder
    # Back on: the node boots from the same stick, after a power cut.
    restarted=$holder
    if ((cut < cuts)); then
      power_on_again "$holder"
      await_vip_candidates "${NODES[@]}"
    fi
  done
  median=$(printf '%s\n' "${failovers[@]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
  verdict=met
  awk -v f="$median" -v t="$FAILOVER_TARGET" 'BEGIN { exit !(f <= t) }' || verdict=MISSED
  log "drill 2: failover ${failovers[*]} s; median ${median}s over ${#failovers[@]} cut(s), target ${FAILOVER_TARGET}s: $verdict"
  log "PASS drill 2: the VIP moved to another node within the ${FAILOVER_BOUND}s bound after its holder lost power"
  # Back on (the later drills use the other nodes, so nothing waits for it here).
  powered[$holder]=$(now)
  vm start "$holder" -o "$out" >>"$work/up.log" 2>&1 || fail "kubestick vm start $holder failed" "$work/up.log"
fi

# first_boot_state NODE: the kubeadm/kubectl calls and done markers a repeated first-boot
# step would change.
first_boot_state() {
  ssh_node "$1" 'grep -cE " (kubeadm|kubectl) " /var/log/kubestick-doubles.log; cat /var/lib/kubestick/*.done'
}

if wanted 3; then
  n=optiplex-3
  [[ ${restarted:-} == "$n" ]] && n=optiplex-2
  before=$(first_boot_state "$n") || drill_fail "$n" "cannot read $n's first-boot state over SSH"
  boots=$(clean_log "$n" | grep -ac '\] Linux version ' || true)
  # A clean shutdown, then power on: under TCG a warm reset (`systemctl reboot`) sometimes
  # hangs in the firmware (about 1 reboot in 4 here), which is QEMU's problem, not the node's.
  log "drill 3: rebooting $n (systemctl poweroff, then power on)"
  pid=$(cat "$out/vm/$n/qemu.pid")
  ssh_node "$n" sudo systemctl poweroff || true
  start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS - start < BOOT_TIMEOUT)) || drill_fail "$n" "$n did not power off within ${BOOT_TIMEOUT}s"
    sleep 1
  done
  vm start "$n" -o "$out" >>"$work/up.log" 2>&1 || fail "kubestick vm start $n failed" "$work/up.log"
  start=$SECONDS
  while (($(clean_log "$n" | grep -ac '\] Linux version ' || true) <= boots)); do
    ((SECONDS - start < BOOT_TIMEOUT)) || drill_fail "$n" "$n did not boot again within ${BOOT_TIMEOUT}s"
    sleep 2
  done
  # The identity line is printed on every boot, after cloud-init: the boot is complete.
  start=$SECONDS
  until grep -aq 'kubestick: node=' <<<"$(clean_log "$n" | awk -v b="$boots" '/\] Linux version /{c++} c > b')"; do
    ((SECONDS - start < BOOT_TIMEOUT)) || drill_fail "$n" "$n printed no identity line after the reboot"
    sleep 2
  done
  # Every unit of the boot has been started (or skipped by its condition) once systemd
  # says the boot is over: a first-boot step that started again would show by then.
  ssh_node "$n" systemctl is-system-running --wait >/dev/null ||
    log "drill 3: $n's boot finished $(ssh_node "$n" systemctl is-system-running || true) (a failed unit is not this drill's concern)"
  second=$(clean_log "$n" | awk -v b="$boots" '/\] Linux version /{c++} c > b')
  if grep -aE 'Starting kubestick-(storage|bootstrap|addons)\.service' <<<"$second"; then
    drill_fail "$n" "a first-boot step started again after the reboot"
  fi
  after=$(first_boot_state "$n") || drill_fail "$n" "cannot read $n's first-boot state over SSH after the reboot"
  [[ $after == "$before" ]] ||
    drill_fail "$n" "kubeadm/kubectl calls or done markers changed across the reboot: $(diff <(echo "$before") <(echo "$after") || true)"
  grep -q 'unmet condition' <<<"$(ssh_node "$n" sudo journalctl -b -u kubestick-bootstrap.service)" ||
    drill_fail "$n" "the journal does not show kubestick-bootstrap skipped by its condition after the reboot"
  log "PASS drill 3: after a reboot of $n no first-boot step ran again (kubeadm/kubectl calls and done markers unchanged)"
fi

if wanted 4; then
  # optiplex-3's disk is an OSD rook made; optiplex-2's has a partition table from its past.
  label_node=optiplex-3 table_node=optiplex-2
  for n in $label_node $table_node; do vm stop "$n" -o "$out" >/dev/null; done
  label_disk=$out/vm/$label_node/sata.raw table_disk=$out/vm/$table_node/sata.raw
  printf 'bluestore block device\n%s\n' "$(uuidgen 2>/dev/null || echo 4a1b2c3d-0000-4000-8000-000000000001)" |
    dd of="$label_disk" conv=notrunc status=none
  label_before=$(head -c 1M "$label_disk" | sha256sum)
  printf 'label: gpt\n,1GiB,L\n,,L\n' | sfdisk --quiet "$table_disk" >/dev/null
  sfdisk --dump "$table_disk" | grep -q 'label: gpt' || fail "could not write a partition table onto $table_disk"
  log "drill 4: re-flashing $label_node (bluestore label on its disk) and $table_node (old GPT on its disk)"
  for n in $label_node $table_node; do
    powered[$n]=$(now)
    vm start "$n" --reflash -o "$out" >>"$work/up.log" 2>&1 || fail "kubestick vm start $n --reflash failed" "$work/up.log"
  done
  line=$(wait_node $label_node 'kubestick: storage +done:' "$BOOT_TIMEOUT") ||
    drill_fail $label_node "the storage step did not finish on the re-flashed $label_node"
  [[ $line == *"bluestore label: left intact"* ]] || drill_fail $label_node "the bluestore disk was not recognised: $line"
  [[ $(head -c 1M "$label_disk" | sha256sum) == "$label_before" ]] ||
    drill_fail $label_node "the first MiB of $label_node's OSD disk changed"
  log "$label_node: ${line#*kubestick: }"
  line=$(wait_node $table_node 'kubestick: storage +done:' "$BOOT_TIMEOUT") ||
    drill_fail $table_node "the storage step did not finish on the re-flashed $table_node"
  [[ $line == *"cleared "* ]] || drill_fail $table_node "the old partition table was not cleared: $line"
  if sfdisk --dump "$table_disk" >/dev/null 2>&1; then
    drill_fail $table_node "$table_node's disk still has a partition table: $(sfdisk --dump "$table_disk" 2>&1 | head -n 5)"
  fi
  log "$table_node: ${line#*kubestick: }"
  # Both rejoin the cluster they were part of (a re-flashed member replaces its old self).
  unset "bootstrapped[$label_node]" "bootstrapped[$table_node]" "reached[$label_node]" "reached[$table_node]"
  await_bootstrap $label_node $table_node
  log "PASS drill 4: bluestore disk left intact, old partition table cleared, both re-flashed nodes joined again"
fi

if wanted 6; then
  log "drill 6: first boot, from power-on to the bootstrap step (its unit started) and to its end ($accel):"
  printf '%s' "$first_boot_times" >&2
  log "PASS drill 6: boot times printed"
fi
log "drills $(printf '%s\n' "${!want[@]}" | sort -n | tr '\n' ' ')passed in $((SECONDS - suite_start))s"
