#!/usr/bin/env python3
"""What a real rehearsal node costs while it sits idle, measured from both sides.

    observe.py --out OUT --key ID [--seconds N] [--json FILE] NODE...

For each NODE of the rehearsal in OUT (a `kubestick vm` output directory; ID is the SSH key
the run put into cluster.toml), two samples SECONDS apart (default 300) of:
  - the host CPU of the node's QEMU process (/proc/PID/stat), in host cores;
  - inside the guest, the CPU of every systemd service and every container (cgroup v2
    cpu.stat usage_usec, which counts processes that came and went between the samples:
    keepalived's check, timers), named by service or by pod/container, in % of one vCPU;
    the rest of the guest's busy time (kernel threads, interrupts) as "kernel and other";
  - the bytes written to the boot disk (/sys/block/vda/stat), per day at that rate;
  - etcd's own counters (http://127.0.0.1:2381/metrics on the node): WAL fsyncs and their
    p99 from the histogram's delta, backend commits, leader changes, proposals applied;
  - the API requests served by this node's kube-apiserver, by verb and resource, per minute
    (https://127.0.0.1:6443/metrics, with the node's admin.conf).
Prints one table per node, and with --json writes the figures for make bench and the drills.
Only SSH to 127.0.0.1 forwards: nothing here reaches any other address.
"""

import argparse
import json
import re
import subprocess
import sys
import time

# Runs inside the guest as root; prints one sample. Kept POSIX sh + awk: nothing to install.
SAMPLER = r"""
set -u
echo "UPTIME $(cut -d' ' -f1 /proc/uptime)"
# /proc/stat is in USER_HZ (100) ticks: busy = user nice system irq softirq steal.
awk '/^cpu / { printf "STAT %d %d %d\n", ($2+$3+$4+$7+$8+$9)*10000, ($5+$6)*10000, $9*10000 }' /proc/stat
echo "NCPU $(grep -c '^processor' /proc/cpuinfo)"
for d in vda sda; do [ -r /sys/block/$d/stat ] && echo "DISK $d $(cat /sys/block/$d/stat)"; done
cd /sys/fs/cgroup
for f in cpu.stat system.slice/cpu.stat kubepods.slice/cpu.stat system.slice/*/cpu.stat init.scope/cpu.stat user.slice/cpu.stat \
         $(find kubepods.slice -name 'cri-containerd-*.scope' 2>/dev/null | sed 's|$|/cpu.stat|'); do
  [ -r "$f" ] || continue
  echo "CG ${f%/cpu.stat} $(awk '/^usage_usec/ {print $2}' "$f")"
  # Bytes this cgroup wrote (the page cache's writeback is charged to whoever dirtied it).
  io=${f%cpu.stat}io.stat
  [ -r "$io" ] && echo "IO ${f%/cpu.stat} $(awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^wbytes=/) { sub("wbytes=", "", $i); t += $i } } END { print t + 0 }' "$io")"
done
"""

METRICS = r"""
curl -s --max-time 20 http://127.0.0.1:2381/metrics 2>/dev/null | grep -E '^etcd_(disk_wal_fsync_duration_seconds_bucket|disk_wal_fsync_duration_seconds_count|disk_backend_commit_duration_seconds_count|server_leader_changes_seen_total|server_proposals_applied_total|server_is_leader|network_peer_sent_bytes_total|server_heartbeat_send_failures_total|server_slow_apply_total|server_slow_read_indexes_total)' | sed 's/^/ETCD /'
if [ -r /etc/kubernetes/admin.conf ]; then
  . /etc/kubestick/node.env
  kubectl --kubeconfig /etc/kubernetes/admin.conf --server "https://$KUBESTICK_NODE_IP:6443" --request-timeout=30s get --raw /metrics 2>/dev/null |
    grep -E '^apiserver_request_total' | sed 's/^/API /'
fi
"""

CONTAINERS = "crictl --timeout 60s ps -a -o json 2>/dev/null; echo; crictl --timeout 60s pods -o json 2>/dev/null"


def ssh(args, node, port, script):
    cmd = ["ssh", "-i", args.key, "-p", str(port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
           "kube@127.0.0.1", "sudo sh -s"]
    for attempt in range(5):
        r = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=300)
        if r.returncode != 255:
            return r.stdout
        time.sleep(3)
    raise SystemExit(f"observe: cannot reach {node} over SSH (port {port}): {r.stderr.strip()}")


def qemu_cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, USER_HZ


def parse_sample(text):
    s = {"cg": {}, "io": {}, "disk": {}, "etcd": {}, "api": {}}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "UPTIME":
            s["uptime"] = float(rest)
        elif kind == "STAT":
            busy, idle, steal = rest.split()
            s["busy"], s["idle"] = int(busy), int(idle)
        elif kind == "NCPU":
            s["ncpu"] = int(rest)
        elif kind == "DISK":
            dev, *f = rest.split()
            s["disk"][dev] = {"sectors_written": int(f[6]), "writes": int(f[4])}
        elif kind in ("CG", "IO"):
            path, _, n = rest.rpartition(" ")
            if n.isdigit():
                s[kind.lower()][path] = int(n)
        elif kind in ("ETCD", "API"):
            m = re.match(r"(\S+?)(\{.*\})? (\S+)$", rest)
            if m:
                s["etcd" if kind == "ETCD" else "api"][m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return s


def container_names(text):
    """Container and pod sandbox ids to pod/container names, from crictl ps and crictl pods."""
    names = {}
    decoder = json.JSONDecoder()
    text = text.strip()
    while text:
        try:
            doc, end = decoder.raw_decode(text)
        except ValueError:
            break
        text = text[end:].strip()
        for c in doc.get("containers", []):
            pod = c.get("labels", {}).get("io.kubernetes.pod.name", "?")
            names[c["id"]] = f"{pod}/{c['metadata']['name']}"
        for p in doc.get("items", []):
            names[p["id"]] = "pod sandboxes (pause)"
    return names


def label(path, names):
    m = re.search(r"cri-containerd-([0-9a-f]{64})\.scope$", path)
    if m:
        full = names.get(m.group(1), "container " + m.group(1)[:12])
        # Static pods are named component-node: the node is in the table's title already.
        full = re.sub(r"^([a-z-]+?)-optiplex-\d+/", r"\1/", full)
        # A DaemonSet's or Deployment's pod is named by its workload: kube-flannel-ds-x7k2p.
        return re.sub(r"^([a-z-]+?)(-[0-9a-f]{8,10})?-[0-9a-z]{5}/", r"\1/", full)
    return path.split("/")[-1].removesuffix(".service")


def histogram_p99(before, after, name):
    """p99 of a Prometheus histogram over the interval, from the buckets' deltas (upper bound)."""
    buckets = []
    for key, value in after.items():
        m = re.match(re.escape(name) + r'_bucket\{le="([^"]+)"\}', key)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, value - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None, 0
    for le, count in buckets:
        if count >= 0.99 * total:
            return le, int(total)
    return None, int(total)


def take(args, nodes):
    """One sample of every node: (QEMU CPU seconds, the guest's sample, monotonic time)."""
    return {node: (qemu_cpu_seconds(pid), parse_sample(ssh(args, node, port, SAMPLER + METRICS)), time.monotonic())
            for node, (port, pid) in nodes.items()}


def observe(args, node, port, first, second):
    q0, a, t0 = first
    q1, b, t1 = second
    wall = t1 - t0
    names = container_names(ssh(args, node, port, CONTAINERS))
    guest_wall = b["uptime"] - a["uptime"]
    ncpu = b.get("ncpu", 1)
    def used(path):
        return (b["cg"][path] - a["cg"][path]) / 1e4 / guest_wall if path in a["cg"] and path in b["cg"] else 0.0

    top = {"system.slice", "kubepods.slice", "user.slice", "init.scope"}
    by = {}
    for path in b["cg"]:
        if path in top or path == "cpu.stat":
            continue
        name = label(path, names)
        by[name] = by.get(name, 0.0) + used(path)
    busy = (b["busy"] - a["busy"]) / 1e4 / guest_wall
    # What the listed cgroups leave of their parents: units that ran and ended between the
    # samples (timers, keepalived's check runs inside keepalived's), and the kernel's own.
    live_system = sum(used(p) for p in b["cg"] if p.startswith("system.slice/"))
    by["ended units (timers)"] = max(0.0, used("system.slice") - live_system)
    by["kernel and other"] = max(0.0, busy - sum(used(p) for p in top))
    by = {(k.split("/")[0] if k.count("/") == 1 and k.split("/")[0] == k.split("/")[1] else k): v for k, v in by.items()}
    writers = {}
    for path in b["io"]:
        if path in a["io"] and path not in top and path != "cpu.stat":
            name = label(path, names)
            writers[name] = writers.get(name, 0) + (b["io"][path] - a["io"][path]) / guest_wall * 86400 / 2**20
    writers = {k: v for k, v in sorted(writers.items(), key=lambda kv: -kv[1]) if v >= 1}
    disk = {}
    for dev in b["disk"]:
        if dev in a["disk"]:
            written = (b["disk"][dev]["sectors_written"] - a["disk"][dev]["sectors_written"]) * 512
            disk[dev] = {"bytes": written, "gib_per_day": written / guest_wall * 86400 / 2**30,
                         "writes_per_s": (b["disk"][dev]["writes"] - a["disk"][dev]["writes"]) / guest_wall}
    e0, e1 = a["etcd"], b["etcd"]
    fsync_p99, fsyncs = histogram_p99(e0, e1, "etcd_disk_wal_fsync_duration_seconds")
    etcd = {}
    if e1:
        etcd = {
            "wal_fsyncs_per_s": fsyncs / guest_wall,
            "wal_fsync_p99_s": fsync_p99,
            "backend_commits_per_s": (e1.get("etcd_disk_backend_commit_duration_seconds_count", 0)
                                      - e0.get("etcd_disk_backend_commit_duration_seconds_count", 0)) / guest_wall,
            "proposals_per_s": (e1.get("etcd_server_proposals_applied_total", 0)
                                - e0.get("etcd_server_proposals_applied_total", 0)) / guest_wall,
            "leader_changes_total": e1.get("etcd_server_leader_changes_seen_total"),
            "leader_changes": e1.get("etcd_server_leader_changes_seen_total", 0)
            - e0.get("etcd_server_leader_changes_seen_total", 0),
            "is_leader": bool(e1.get("etcd_server_is_leader", 0)),
        }
    api = {}
    for key, value in b["api"].items():
        m = re.search(r'resource="([^"]*)".*verb="([^"]*)"', key)
        if not m:
            continue
        k = f"{m.group(2)} {m.group(1) or '(non-resource)'}"
        api[k] = api.get(k, 0.0) + (value - a["api"].get(key, 0.0)) * 60 / guest_wall
    api = {k: v for k, v in sorted(api.items(), key=lambda kv: -kv[1]) if v > 0.05}
    return {
        "node": node,
        "seconds": round(guest_wall, 1),
        "vcpus": ncpu,
        "qemu_host_cores": (q1 - q0) / wall,
        "guest_busy_vcpu_pct": busy,
        "cpu_pct_of_one_vcpu": dict(sorted(by.items(), key=lambda kv: -kv[1])),
        "disk": disk,
        "writers_mib_per_day": writers,
        "etcd": etcd,
        "api_requests_per_min": api,
    }


def report(r, top):
    out = []
    out.append(f"{r['node']}: QEMU {r['qemu_host_cores']:.2f} host cores; guest {r['guest_busy_vcpu_pct']:.0f}% "
               f"of one vCPU busy ({r['vcpus']} vCPUs) over {r['seconds']:.0f} s")
    shown = [(k, v) for k, v in r["cpu_pct_of_one_vcpu"].items() if v >= 0.5][:top]
    for name, pct in shown:
        out.append(f"  {name:<44} {pct:5.1f}%")
    for dev, d in r["disk"].items():
        out.append(f"  writes to {dev}: {d['bytes'] / 2**20:.1f} MiB in {r['seconds']:.0f} s, "
                   f"{d['gib_per_day']:.2f} GiB/day, {d['writes_per_s']:.1f} writes/s")
    if r["writers_mib_per_day"]:
        out.append("  written by (MiB/day): " + ", ".join(f"{k} {v:.0f}" for k, v in list(r["writers_mib_per_day"].items())[:8]))
    e = r["etcd"]
    if e:
        p99 = "n/a" if e["wal_fsync_p99_s"] is None else f"{e['wal_fsync_p99_s'] * 1000:g} ms"
        out.append(f"  etcd: {e['wal_fsyncs_per_s']:.2f} WAL fsyncs/s (p99 <= {p99}), "
                   f"{e['proposals_per_s']:.2f} proposals/s, leader changes {e['leader_changes']:.0f} "
                   f"({e['leader_changes_total']:.0f} since start){', leader' if e['is_leader'] else ''}")
    if r["api_requests_per_min"]:
        top_api = list(r["api_requests_per_min"].items())[:8]
        out.append("  API requests/min: " + ", ".join(f"{k} {v:.1f}" for k, v in top_api))
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the kubestick vm output directory (holds vm/)")
    p.add_argument("--key", required=True, help="the SSH private key of the rehearsal's admin user")
    p.add_argument("--kubestick", default="kubestick")
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--top", type=int, default=14, help="rows of the CPU table per node")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("nodes", nargs="+")
    args = p.parse_args()
    status = json.loads(subprocess.run([args.kubestick, "vm", "status", "-o", args.out, "--json"],
                                       check=True, capture_output=True, text=True).stdout)
    ports = {n["name"]: n["ssh_port"] for n in status["nodes"]}
    nodes = {n: (ports[n], int(open(f"{args.out}/vm/{n}/qemu.pid").read())) for n in args.nodes}
    # Every node over the same window: what one costs is seen beside what the others do.
    first = take(args, nodes)
    time.sleep(args.seconds)
    second = take(args, nodes)
    results = []
    for node, (port, _) in nodes.items():
        results.append(observe(args, node, port, first[node], second[node]))
        print(report(results[-1], args.top), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
