#!/usr/bin/env bash
# One node image boots under QEMU with OVMF (KVM when it works, TCG otherwise), reaches
# multi-user.target (by its journal), cloud-init finishes, and the node reports its
# hostname, its static address, the by-id name of its virtual SATA disk, and a root
# filesystem grown to fill a boot disk larger than the image, on the serial console.
# Then the first-boot steps: alone, the init node runs prepare, images (the container
# images it carries, into containerd), storage, bootstrap (kubeadm init, with the config
# kubestick rendered for it) and addons, in that order, and says so on the console. After a
# shutdown and a second boot of the same stick, none of them runs again. (The Kubernetes
# binaries are the recording doubles of qemu-tests/make-mirror.py.)
set -euo pipefail
# shellcheck source=qemu-tests/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/kubestick-boot-one.XXXXXX")
trap 'stop_vm "$work" optiplex-1; rm -rf "$work"' EXIT

log "building the rehearsal cluster with the test-double artifacts"
build_rehearsal "$work"
image=$work/out/optiplex-1.img
[[ -f $image ]] || fail "no image at $image" "$work/build.log"

ACCEL=$(pick_accel "$image")
export ACCEL
log "booting optiplex-1 with $ACCEL"
truncate -s 2G "$work/sata1.raw"
start=$SECONDS
DISK_SIZE=4G start_vm optiplex-1 "$image" "$work/sata1.raw" SATA-NODE1 52:54:00:77:00:01 "$work"

serial=$work/optiplex-1.serial
timeout=${BOOT_TIMEOUT:-600}
report=$(wait_for_line "$serial" 'kubestick: node=' "$timeout") || fail "no kubestick report within ${timeout}s" "$serial"
log "report after $((SECONDS - start))s: $report"
wait_for_line "$serial" 'Cloud-init v\. .* finished' "$timeout" >/dev/null || fail "cloud-init did not finish" "$serial"

[[ $report == *"node=optiplex-1 "* ]] || fail "hostname is not optiplex-1: $report" "$serial"
[[ $report == *"role=control-plane "* ]] || fail "role is not control-plane: $report" "$serial"
[[ $report == *"lan0=10.77.0.21/24 "* ]] || fail "lan0 does not have 10.77.0.21/24: $report" "$serial"
[[ $report == *"ata-QEMU_HARDDISK_SATA-NODE1"* ]] || fail "the SATA disk is not /dev/disk/by-id/ata-QEMU_HARDDISK_SATA-NODE1: $report" "$serial"
root_mib=$(sed -E 's/.* root=([0-9]+)MiB.*/\1/' <<<"$report")
((root_mib > 3000)) || fail "the root filesystem did not grow to fill the 4 GiB disk (${root_mib} MiB): $report" "$serial"
log "PASS boot-one: hostname, address and by-id disk as cluster.toml says ($ACCEL, $((SECONDS - start))s)"

# --- first-boot steps ---------------------------------------------------------------------
for step in prepare images storage bootstrap addons; do
  if ! line=$(wait_for_line "$serial" "kubestick: $step +done" "$timeout"); then
    powerdown_vm "$work" optiplex-1 60 || stop_vm "$work" optiplex-1
    fail "the $step step did not finish within ${timeout}s; its journal:
$(guest_journal "$work" optiplex-1 "kubestick-$step.service")" "$serial"
  fi
  log "after $((SECONDS - start))s: $line"
done
# A clean shutdown (the ACPI button), not a power cut: what the steps wrote is on the disk
# when QEMU exits, whatever the timing. Power cuts are drill 2's and drill 4's business.
powerdown_vm "$work" optiplex-1 "$timeout" || fail "optiplex-1 did not shut down within ${timeout}s of the ACPI button" "$serial"
doubles=$(guest_cat "$work" optiplex-1 /var/log/kubestick-doubles.log)
# From the journal, not the console: systemd stops printing its status there once the
# serial getty runs, which may be before multi-user.target is reached.
guest_journal "$work" optiplex-1 multi-user.target | grep -q 'Reached target multi-user.target' ||
  fail "multi-user.target was not reached: $(guest_journal "$work" optiplex-1 multi-user.target)" "$serial"
markers=$(for s in storage bootstrap addons; do printf '%s: ' "$s"; guest_cat "$work" optiplex-1 "/var/lib/kubestick/$s.done"; done)
log "done markers:"$'\n'"$markers"
grep -q '^storage: .*nothing to clear\|^storage: .*cleared' <<<"$markers" || fail "storage marker: $markers" "$serial"
grep -q '^bootstrap: .*created the cluster (kubeadm init)' <<<"$markers" || fail "bootstrap marker: $markers" "$serial"
grep -q '^addons: .*applied flannel, rook-ceph, traefik, cert-manager' <<<"$markers" || fail "addons marker: $markers" "$serial"

# The steps ran in order: containerd up before kubeadm, kubeadm init before the first apply,
# and the add-ons from the pod network to the certificate issuer.
first() { grep -n -m1 -E "$1" <<<"$doubles" | cut -d: -f1; }
c=$(first ' containerd') k=$(first ' kubeadm init --config') a=$(first ' kubectl apply ')
[[ -n $c && -n $k && -n $a ]] || fail "containerd, kubeadm init and kubectl apply were not all called: $doubles" "$serial"
((c < k && k < a)) || fail "out of order (containerd line $c, kubeadm init $k, first apply $a)" "$serial"
applies=$(grep ' kubectl apply ' <<<"$doubles" | grep -o '[^/]*\.yaml$' | tr '\n' ' ')
[[ $applies == flannel.yaml\ rook-crds.yaml* && $applies == *traefik.yaml\ cert-manager.yaml\ cluster-issuer.yaml\  ]] ||
  fail "add-ons applied in the wrong order: $applies" "$serial"
grep ' kubectl apply ' <<<"$doubles" | grep -vq -- '--server-side' && fail "an add-on was not applied server-side" "$serial"

# The images it carries went into containerd's k8s.io namespace, pinned, once, before
# kubeadm ran.
imports=$(grep -c ' ctr .*images import ' <<<"$doubles" || true)
((imports == 1)) || fail "the images were imported $imports times, not once: $(grep ' ctr ' <<<"$doubles")" "$serial"
i=$(first ' ctr --address /run/containerd/containerd.sock --namespace k8s.io images import --platform linux/amd64 --label io.cri-containerd.pinned=pinned -$')
[[ -n $i ]] || fail "the import was not into k8s.io, pinned: $(grep ' ctr ' <<<"$doubles")" "$serial"
((i < k)) || fail "the images were imported after kubeadm init (line $i, kubeadm init $k)" "$serial"

# kubeadm ran with exactly the configuration kubestick rendered for this node.
want=$(sha256sum <"$work/out/optiplex-1/files/etc/kubestick/kubeadm-init.yaml" | cut -d' ' -f1)
grep -q "kubeadm init config /etc/kubestick/kubeadm-init.yaml sha256=$want" <<<"$doubles" ||
  fail "kubeadm init did not get the rendered kubeadm-init.yaml (sha256 $want): $(grep kubeadm <<<"$doubles")" "$serial"
log "PASS first boot: prepare, images (into k8s.io, pinned, once), storage, bootstrap (kubeadm init with the rendered config), addons in order"

# --- second boot: nothing runs again ------------------------------------------------------
mv "$serial" "$work/optiplex-1.first.serial"
REBOOT=1 DISK_SIZE=4G start_vm optiplex-1 "$image" "$work/sata1.raw" SATA-NODE1 52:54:00:77:00:01 "$work"
second=$SECONDS
wait_for_line "$serial" 'kubestick: node=' "$timeout" >/dev/null || fail "no report on the second boot" "$serial"
wait_for_line "$serial" 'kubestick: addons +done' "$timeout" >/dev/null || fail "no status on the second boot" "$serial"
log "second boot: report and status after $((SECONDS - second))s"
# Some time for a wrongly started first-boot unit to show itself (a correct node passes
# however long this is), then a clean shutdown, as above.
sleep 10
powerdown_vm "$work" optiplex-1 "$timeout" || fail "optiplex-1 did not shut down within ${timeout}s of the ACPI button" "$serial"
again=$(guest_cat "$work" optiplex-1 /var/log/kubestick-doubles.log)
markers_again=$(for s in storage bootstrap addons; do printf '%s: ' "$s"; guest_cat "$work" optiplex-1 "/var/lib/kubestick/$s.done"; done)
[[ $markers_again == "$markers" ]] || fail "the done markers changed on the second boot: $markers_again" "$serial"
before=$(grep -cE ' (kubeadm|kubectl) ' <<<"$doubles")
after=$(grep -cE ' (kubeadm|kubectl) ' <<<"$again")
((after == before)) || fail "kubeadm/kubectl ran again on the second boot: $(diff <(echo "$doubles") <(echo "$again") | grep -E 'kubeadm|kubectl')" "$serial"
grep -q 'kubestick-storage\|kubestick-bootstrap\|kubestick-addons' <(tr -d '\r' <"$serial" | grep -E 'Starting|Started') &&
  fail "a first-boot unit started on the second boot" "$serial"
log "PASS second boot: no first-boot step ran again ($before kubeadm/kubectl calls before and after)"
