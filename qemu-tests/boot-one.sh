#!/usr/bin/env bash
# One node image boots under QEMU with OVMF (KVM when it works, TCG otherwise), reaches
# multi-user.target, cloud-init finishes, and the node reports its hostname, its static
# address, the by-id name of its virtual SATA disk, and a root filesystem grown to fill a
# boot disk larger than the image, on the serial console.
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
grep -q 'Reached target.*[Mm]ulti-[Uu]ser' <(tr -d '\r' <"$serial") || fail "multi-user.target was not reached" "$serial"
wait_for_line "$serial" 'Cloud-init v\. .* finished' 60 >/dev/null || fail "cloud-init did not finish" "$serial"

[[ $report == *"node=optiplex-1 "* ]] || fail "hostname is not optiplex-1: $report" "$serial"
[[ $report == *"role=control-plane "* ]] || fail "role is not control-plane: $report" "$serial"
[[ $report == *"lan0=10.77.0.21/24 "* ]] || fail "lan0 does not have 10.77.0.21/24: $report" "$serial"
[[ $report == *"ata-QEMU_HARDDISK_SATA-NODE1"* ]] || fail "the SATA disk is not /dev/disk/by-id/ata-QEMU_HARDDISK_SATA-NODE1: $report" "$serial"
root_mib=$(sed -E 's/.* root=([0-9]+)MiB.*/\1/' <<<"$report")
((root_mib > 3000)) || fail "the root filesystem did not grow to fill the 4 GiB disk (${root_mib} MiB): $report" "$serial"
log "PASS boot-one: hostname, address and by-id disk as cluster.toml says ($ACCEL, $((SECONDS - start))s)"
