#!/usr/bin/env bash
# Shared helpers for the QEMU tests: building the rehearsal cluster with the test-double
# artifact mirror, picking an accelerator, booting a node image, reading its serial log.
# Networking: each VM gets a QEMU user-mode netdev with restrict=on (no packet leaves this
# machine) unless a test attaches it to a hub; nothing here talks to any outside address.
set -euo pipefail

QT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$QT_DIR/.." && pwd)
KUBESTICK=${KUBESTICK:-$REPO/target/debug/kubestick}
OVMF_CODE=${OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.fd}
OVMF_VARS=${OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() {
  printf 'FAIL: %s\n' "$1" >&2
  if [[ -n ${2:-} && -f $2 ]]; then
    printf -- '--- last lines of %s ---\n' "$2" >&2
    tail -n 40 "$2" | tr -d '\r' >&2
  fi
  exit 1
}

# build_rehearsal WORKDIR: the test doubles' mirror and lock, then `kubestick build` of
# qemu-tests/cluster.toml into WORKDIR/out. The base image cache is shared between runs.
build_rehearsal() {
  local work=$1
  mkdir -p "$work"
  python3 "$QT_DIR/make-mirror.py" "$REPO" "$work/doubles"
  cp "$QT_DIR/cluster.toml" "$work/cluster.toml"
  "$KUBESTICK" build "$work/cluster.toml" -o "$work/out" \
    --lock "$work/doubles/artifacts.lock" --mirror "$work/doubles/mirror" \
    --cache "${KUBESTICK_TEST_CACHE:-$REPO/target/qemu-tests-cache}" >"$work/build.log" 2>&1 \
    || fail "kubestick build failed" "$work/build.log"
}

# with_ssh_key SRC DST PUBKEY_FILE: cluster file SRC with its admin's SSH keys replaced by
# the one key in PUBKEY_FILE (made for this run), written to DST.
with_ssh_key() {
  python3 - "$1" "$2" "$(cat "$3")" <<'EOF'
import re, sys
src, dst, key = sys.argv[1:]
text = open(src).read()
text, n = re.subn(r'ssh_authorized_keys = \[\n.*?\n\]', 'ssh_authorized_keys = [\n  "%s",\n]' % key, text, flags=re.S)
assert n == 1, "no ssh_authorized_keys list in " + src
open(dst, "w").write(text)
EOF
}

# ssh_node NODE COMMAND...: as the admin user, with the key the test put into cluster.toml
# ($work/id), through the port kubestick forwards from 127.0.0.1 to the node's address (the
# caller's ssh_port[NODE]). A connection that fails (ssh's own exit code 255: a TCG guest's
# sshd busy past the timeout) is tried again; the command's own failure is returned at once.
declare -A ssh_port=()
ssh_node() {
  local node=$1 try rc
  shift
  for try in 1 2 3 4 5; do
    rc=0
    ssh -i "$work/id" -p "${ssh_port[$node]}" -o BatchMode=yes -o ConnectTimeout=30 \
      -o ServerAliveInterval=10 -o ServerAliveCountMax=6 \
      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR kube@127.0.0.1 "$@" || rc=$?
    ((rc == 255 && try < 5)) || return "$rc"
    sleep 3
  done
}

# pick_accel IMAGE: "kvm" when KVM boots a real kernel here, else "tcg". A trivial guest
# is not enough: on some hosts KVM starts but hangs once a kernel runs, so the probe boots
# the image's own kernel to its "no root" panic (panic=-1 makes QEMU exit).
pick_accel() {
  local image=$1 tmp
  if [[ -n ${QEMU_ACCEL:-} ]]; then echo "$QEMU_ACCEL"; return; fi
  if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then echo tcg; return; fi
  tmp=$(mktemp -d)
  # The ESP starts at 1 MiB; mtools reads the kernel without mounting.
  if mcopy -n -i "$image@@1048576" ::/vmlinuz "$tmp/vmlinuz" 2>/dev/null &&
    timeout 20 qemu-system-x86_64 -accel kvm -machine q35 -cpu host -m 256 -nodefaults -display none \
      -no-reboot -serial none -kernel "$tmp/vmlinuz" -append "panic=-1" >/dev/null 2>&1; then
    echo kvm
  else
    log "KVM does not boot a kernel here (probe timed out); using TCG"
    echo tcg
  fi
  rm -rf "$tmp"
}

# start_vm NAME IMAGE DATA_DISK SERIAL MAC WORKDIR [NETDEV...]: boots IMAGE through a
# copy-on-write overlay (the image is never modified) with a virtual SATA disk whose
# serial gives the by-id name; writes WORKDIR/NAME.serial and WORKDIR/NAME.pid.
start_vm() {
  local name=$1 image=$2 data=$3 serial=$4 mac=$5 work=$6
  shift 6
  local accel cpu smp
  accel=${ACCEL:-tcg}
  if [[ $accel == kvm ]]; then cpu=host; else cpu=max; fi
  smp=${VM_SMP:-2}
  # DISK_SIZE larger than the image stands for a bigger USB stick (the root grows into it).
  # REBOOT=1 boots the same stick again: the overlay (what the node wrote) is kept.
  if [[ ${REBOOT:-0} != 1 || ! -f $work/$name.qcow2 ]]; then
    qemu-img create -q -f qcow2 -b "$(realpath "$image")" -F raw "$work/$name.qcow2" ${DISK_SIZE:+"$DISK_SIZE"}
    cp "$OVMF_VARS" "$work/$name.vars.fd"
  fi
  local net=("$@")
  if ((${#net[@]} == 0)); then
    net=(-netdev "user,id=n0,restrict=on" -device "virtio-net-pci,netdev=n0,mac=$mac")
  fi
  qemu-system-x86_64 -name "$name" -machine q35 -accel "$accel" -cpu "$cpu" -m "${VM_MEMORY:-2048}" -smp "$smp" \
    -nodefaults -display none -no-user-config \
    -drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE" \
    -drive "if=pflash,format=raw,file=$work/$name.vars.fd" \
    -drive "if=none,id=boot,format=qcow2,file=$work/$name.qcow2" -device virtio-blk-pci,drive=boot,bootindex=0 \
    -device ahci,id=ahci -drive "if=none,id=sata0,format=raw,file=$data" \
    -device "ide-hd,bus=ahci.0,drive=sata0,serial=$serial" \
    "${net[@]}" \
    -serial "file:$work/$name.serial" \
    -qmp "unix:$work/$name.qmp,server=on,wait=off" \
    -pidfile "$work/$name.pid" -daemonize
}

stop_vm() {
  local pidfile=$1/$2.pid pid
  if [[ -f $pidfile ]]; then
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    # Wait for QEMU to let go of its disks before anything reads or reuses them.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    rm -f "$pidfile"
  fi
}

# powerdown_vm WORKDIR NAME TIMEOUT_SECONDS: presses the VM's ACPI power button (QMP
# system_powerdown) and waits for QEMU to exit: the guest shuts down cleanly, so everything
# it wrote is on its disk, however loaded this machine is.
powerdown_vm() {
  local work=$1 name=$2 timeout=$3 pid start
  pid=$(cat "$work/$name.pid")
  python3 - "$work/$name.qmp" <<'PY' || return 1
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect(sys.argv[1])
f = s.makefile("rw")
json.loads(f.readline())  # greeting
for cmd in ("qmp_capabilities", "system_powerdown"):
    f.write(json.dumps({"execute": cmd}) + "\n")
    f.flush()
    while "return" not in (reply := json.loads(f.readline())):
        if "error" in reply:
            sys.exit(f"QMP {cmd}: {reply['error']}")
PY
  start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS - start < timeout)) || return 1
    sleep 1
  done
  rm -f "$work/$name.pid"
}

# guest_debugfs WORKDIR NAME REQUEST: runs one debugfs request (as `cat PATH` or
# `rdump PATH DIR`) on the root filesystem of a VM's boot disk (its qcow2 overlay), offline.
# The VM must be stopped.
guest_debugfs() {
  local work=$1 name=$2 request=$3 raw start
  raw=$work/$name.inspect.raw
  qemu-img convert -O raw "$work/$name.qcow2" "$raw"
  # The root filesystem is the last partition.
  start=$(sfdisk --json "$raw" | python3 -c 'import json,sys; t=json.load(sys.stdin)["partitiontable"]; print(t["partitions"][-1]["start"] * t.get("sectorsize", 512))')
  # After a power cut the newest writes may be only in the ext4 journal, which debugfs does
  # not read: replay it into the copy first, as the next boot would.
  e2fsck -y -E journal_only "$raw?offset=$start" >/dev/null 2>&1 || true
  debugfs -R "$request" "$raw?offset=$start" 2>/dev/null
  rm -f "$raw"
}

# guest_cat WORKDIR NAME PATH: prints a file from a stopped VM's root filesystem.
guest_cat() {
  guest_debugfs "$1" "$2" "cat $3"
}

# guest_journal WORKDIR NAME UNIT: prints the last lines a stopped VM's journal holds for
# UNIT (journald keeps it in /var/log/journal on the boot disk), read offline: what a
# person would read with `journalctl -u UNIT` on the machine.
guest_journal() {
  local work=$1 name=$2 unit=$3 dir
  dir=$work/$name.journal
  rm -rf "$dir" && mkdir -p "$dir"
  guest_debugfs "$work" "$name" "rdump /var/log/journal $dir" >/dev/null || true
  if [[ -d $dir/journal ]]; then
    journalctl --directory "$dir/journal" --no-pager --unit "$unit" --lines 40 2>&1 || true
  else
    echo "(no persistent journal on $name's disk)"
  fi
}

# wait_for_line FILE REGEX TIMEOUT_SECONDS: prints the first matching line.
wait_for_line() {
  local file=$1 regex=$2 timeout=$3 start=$SECONDS line
  while ((SECONDS - start < timeout)); do
    if [[ -f $file ]] && line=$(tr -d '\r' <"$file" | grep -E -m1 -- "$regex"); then
      printf '%s\n' "$line"
      return 0
    fi
    sleep 2
  done
  return 1
}
