#!/usr/bin/env bash
# The rendered kubeadm configuration, checked by the real kubeadm built here (build.sh):
#   - `kubeadm config validate` on every node's kubeadm-init.yaml and kubeadm-join.yaml of the
#     shipped example and of the real rehearsal (strict: an unknown or misspelt field fails);
#   - `kubeadm init phase control-plane all` and `init phase etcd local` in dry-run, with the
#     patches kubestick renders, so the static pods kubeadm would write are read back: every
#     slow-hardware setting (etcd's heartbeat and election timeout, the leader election of
#     the controller-manager and scheduler, the probes, the startup probes sized by
#     controlPlaneComponentHealthCheck) must be in them, as the node would run them.
# Usage: validate-kubeadm.sh   (KUBESTICK: the binary; default target/debug/kubestick)
set -euo pipefail
# shellcheck source=qemu-tests/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

kubeadm=$(bash "$QT_DIR/real/build.sh" | tail -n 1)/bin/kubeadm
work=$(mktemp -d "${TMPDIR:-/tmp}/kubestick-kubeadm.XXXXXX")
trap 'rm -rf "$work"' EXIT
checked=0

for src in "$REPO/examples/homelab.toml" "$QT_DIR/real/cluster.toml"; do
  name=$(basename "$src" .toml)
  # Rendered from a copy: render keeps the cluster's secrets beside the file it is given.
  mkdir -p "$work/$name"
  cp "$src" "$work/$name/cluster.toml"
  "$KUBESTICK" render "$work/$name/cluster.toml" -o "$work/$name/out" >"$work/render.log" 2>&1 ||
    fail "kubestick render $src failed" "$work/render.log"
  for f in "$work/$name"/out/*/files/etc/kubestick/kubeadm-{init,join}.yaml; do
    [[ -f $f ]] || continue
    "$kubeadm" config validate --config "$f" >"$work/validate.log" 2>&1 ||
      fail "the real kubeadm refuses ${f#"$work/"}" "$work/validate.log"
    checked=$((checked + 1))
  done
done
log "kubeadm $("$kubeadm" version -o short) config validate: $checked rendered configurations accepted"

# Every phase the bootstrap runs on its own must take --config: a phase run without it gets
# kubeadm's defaults, not the waits and patches kubestick renders (wait-control-plane takes
# none, so the bootstrap waits for the API server itself).
bootstrap=$work/homelab/out/common/files/usr/local/lib/kubestick/bootstrap
phases=$(python3 - "$bootstrap" <<'EOF'
import re, shlex, sys
lines = open(sys.argv[1]).read().split("\n")
for i, line in enumerate(lines):
    m = re.match(r"\s*for p in (.*); do$", line)
    if not m:
        continue
    kind = re.search(r"kubeadm (init|join) phase \$p", "\n".join(lines[i + 1:i + 4]))
    if kind:
        for p in shlex.split(m.group(1)):
            print(kind.group(1), p)
EOF
)
[[ $(wc -l <<<"$phases") -ge 8 ]] || fail "found only these phases in the bootstrap: $phases"
while read -r cmd p; do
  # shellcheck disable=SC2086 # a phase and its sub-phase
  "$kubeadm" "$cmd" phase $p --help 2>&1 | grep -q -- '--config string' ||
    fail "kubeadm $cmd phase $p takes no --config, yet the bootstrap runs it with one"
done <<<"$phases"
log "kubeadm: the $(wc -l <<<"$phases") phases the bootstrap runs on their own all take --config"

# The static pods the init node would run, patches applied (the path the node reads them
# from is pointed at the rendered copy).
out=$work/homelab/out
init=$(ls "$out"/*/files/etc/kubestick/kubeadm-init.yaml)
sed "s|directory: /etc/kubestick/kubeadm-patches|directory: $out/common/files/etc/kubestick/kubeadm-patches|" "$init" >"$work/init.yaml"
grep -q "directory: $out/common/files/etc/kubestick/kubeadm-patches" "$work/init.yaml" ||
  fail "kubeadm-init.yaml names no patches directory: $init"
export KUBEADM_INIT_DRYRUN_DIR=$work/manifests
mkdir -p "$KUBEADM_INIT_DRYRUN_DIR"
for p in "control-plane all" "etcd local"; do
  # shellcheck disable=SC2086 # a phase and its sub-phase
  "$kubeadm" init phase $p --dry-run --config "$work/init.yaml" >"$work/dry-run.log" 2>&1 ||
    fail "kubeadm init phase $p --dry-run failed" "$work/dry-run.log"
done

python3 - "$KUBEADM_INIT_DRYRUN_DIR" <<'EOF'
import pathlib, sys

# What each static pod must carry (README, "Made for slow hardware").
want = {
    "etcd": {"args": ["--heartbeat-interval=500", "--election-timeout=5000", "--backend-batch-interval=10s"],
             "readiness": 10, "liveness": (20, 9)},
    "kube-apiserver": {"args": [], "readiness": 10, "liveness": (20, 9)},
    "kube-controller-manager": {"args": ["--leader-elect-lease-duration=137s", "--leader-elect-renew-deadline=107s",
                                         "--leader-elect-retry-period=26s"], "readiness": None, "liveness": (20, 9)},
    "kube-scheduler": {"args": ["--leader-elect-lease-duration=137s", "--leader-elect-renew-deadline=107s",
                                "--leader-elect-retry-period=26s"], "readiness": 10, "liveness": (20, 9)},
}
problems = []
for name, w in want.items():
    path = pathlib.Path(sys.argv[1]) / f"{name}.yaml"
    # kubeadm writes its manifests in one fixed layout: the few fields are read by their
    # indentation (the host's python has no YAML parser).
    text = path.read_text()
    for arg in w["args"]:
        if f"    - {arg}\n" not in text:
            problems.append(f"{name}: no {arg}")
    def probe(kind):
        lines = text.split("\n")
        try:
            i = lines.index(f"    {kind}:")
        except ValueError:
            return None
        fields = {}
        for line in lines[i + 1:]:
            if not line.startswith("      "):
                break
            key, _, value = line.strip().partition(": ")
            fields[key] = value
        return fields
    r = probe("readinessProbe")
    if w["readiness"] is None:
        if r is not None:
            problems.append(f"{name}: an unexpected readiness probe")
    elif r is None or r.get("periodSeconds") != str(w["readiness"]):
        problems.append(f"{name}: readiness probe {r}, want every {w['readiness']} s")
    l = probe("livenessProbe")
    if l is None or (l.get("periodSeconds"), l.get("failureThreshold")) != tuple(map(str, w["liveness"])):
        problems.append(f"{name}: liveness probe {l}, want every {w['liveness'][0]} s, {w['liveness'][1]} failures")
    s = probe("startupProbe")
    # controlPlaneComponentHealthCheck (20 minutes) / 10 s.
    if s is None or s.get("failureThreshold") != "120":
        problems.append(f"{name}: startup probe {s}, want 120 failures (20 minutes)")
if problems:
    sys.exit("the static pods kubeadm would write lack kubestick's settings:\n  " + "\n  ".join(problems))
print("static pods as kubeadm writes them (patches applied): " + ", ".join(want))
EOF
log "PASS kubeadm: $checked configurations validated; the init node's static pods carry every slow-hardware setting"
